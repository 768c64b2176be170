"""Every limit is a setting with a clear 4xx: body size, messages, characters, context, max_tokens, nesting, UTF-8, slow bodies."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from gptoss_space.errors import ContextLengthExceeded
from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer, raw_exchange

USER = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def limited():
    """One server with small limits, shared by the module (each test leaves it idle)."""
    backend = ScriptedBackend()
    settings = make_settings(
        max_body_bytes=4096, max_messages=5, max_total_chars=300, max_tokens_cap=64, body_read_timeout_s=0.6
    )
    app = create_app(settings, backend=backend, with_ui=False)
    with LiveServer(app) as server:
        server.backend = backend
        yield server


def post(server, path="/v1/chat/completions", **kw) -> httpx.Response:
    return httpx.post(server.url + path, timeout=10, **kw)


def seed_error(r: httpx.Response) -> str:
    err = r.json()["error"]
    assert isinstance(err, str) and err
    return err


def raw_request(server, head: bytes, body_parts: list[bytes], gap_s: float, read_timeout: float = 5.0) -> bytes:
    """Send a request by hand: the head, then the body parts `gap_s` apart; return what came back."""
    return raw_exchange(server, [head, *body_parts], gap_s=gap_s, timeout=read_timeout)


def test_body_over_max_body_bytes_is_413_with_or_without_content_length(limited):
    big = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    r = post(limited, "/api", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096" in seed_error(r) and "too large" in seed_error(r)
    # Chunked, no Content-Length: the count while reading stops it.
    r = post(limited, "/api", content=iter([big[:3000], big[3000:]]), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096" in seed_error(r)
    assert r.headers["x-content-type-options"] == "nosniff"


def test_too_many_messages_is_400_naming_the_limit(limited):
    r = post(limited, json={"messages": [USER] * 6})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "messages" and "at most 5 messages" in err["message"]


def test_too_many_characters_is_400_naming_the_limit(limited):
    r = post(limited, "/api", json={"messages": [{"role": "user", "content": "y" * 200}] * 2, "stream": False})
    assert r.status_code == 400 and "400 characters" in seed_error(r) and "limit is 300" in seed_error(r)


def test_max_tokens_above_the_cap_is_400_naming_the_field_and_cap(limited):
    for field in ("max_tokens", "max_completion_tokens"):
        r = post(limited, json={"messages": [USER], field: 65})
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == field and "cap of 64" in err["message"]
    assert post(limited, json={"messages": [USER], "max_tokens": 64}).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
def test_context_window_is_400_naming_the_limit_before_any_byte(limited, stream):
    limited.backend.enqueue(ContextLengthExceeded("Prompt is 9000 tokens; this model's context window is 2048 tokens"))
    r = post(limited, json={"messages": [USER], "stream": stream})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and "2048" in err["message"]


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deeply_nested_json_is_400(limited, depth):
    body = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
    settings = make_settings(max_body_bytes=1_000_000)
    app = create_app(settings, backend=limited.backend, with_ui=False)
    with LiveServer(app, host="127.0.0.2") as server:
        r = post(server, "/api", content=body)
        assert r.status_code == 400 and "nested too deeply" in seed_error(r)
        # Nesting inside a field the schema knows is refused by type, not by a crash.
        deep = {"messages": [USER], "response_format": json.loads("[" * 500 + "]" * 500)}
        assert post(server, "/api", json=deep).status_code == 400


def test_invalid_utf8_is_400_naming_the_byte(limited):
    body = b'{"messages": [{"role": "user", "content": "caf\xc3"}]}'
    r = post(limited, "/api", content=body)
    assert r.status_code == 400 and "UTF-8" in seed_error(r) and "byte 46" in seed_error(r)
    # A lone surrogate escape is valid JSON on the wire but no text: 400, not a 500 when the answer is encoded.
    r = post(limited, "/api", content=b'{"messages": [{"role": "user", "content": "\\ud800"}], "stream": false}')
    assert r.status_code == 400 and "surrogate" in seed_error(r)
    r = post(limited, "/api", content=b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "stream": false}')
    assert r.status_code == 200 and "\U0001f600" in r.json()["choices"][0]["message"]["content"]


def test_slow_body_is_cut_with_408_after_body_read_timeout(limited):
    body = json.dumps({"messages": [USER], "stream": False}).encode()
    head = (
        b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    started = limited.backend.started
    t0 = time.monotonic()
    answer = raw_request(limited, head, [bytes([b]) for b in body], gap_s=0.05)
    took = time.monotonic() - t0
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer[:200]
    assert b"connection: close" in rest.lower()
    error = json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]
    assert "not received within 0.6 s" in error
    assert took < 3.0  # answered at the limit, not when the client finished
    assert limited.backend.started == started


def test_a_body_trickling_within_the_limit_is_served(limited):
    body = json.dumps({"messages": [USER], "stream": False}).encode()
    head = (
        b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    half = len(body) // 2
    answer = raw_request(limited, head, [body[:half], body[half:]], gap_s=0.2)
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]


def test_client_leaving_mid_body_is_not_a_server_error(limited, caplog):
    body = json.dumps({"messages": [USER], "stream": False}).encode()
    head = b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    with caplog.at_level("INFO"):
        with socket.create_connection((limited.host, limited.port)) as s:
            s.sendall(head + body[:10])
            time.sleep(0.1)
        time.sleep(0.3)
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert post(limited, "/api", json={"messages": [USER], "stream": False}).status_code == 200


# -- the wall-clock limit per request ----------------------------------------------------------------


def test_stuck_generation_ends_with_504_or_an_error_event_and_the_next_request_is_served():
    backend = ScriptedBackend()
    app = create_app(make_settings(request_timeout_s=0.4), backend=backend, with_ui=False)
    limit = "Generation took longer than the 0.4 s limit"
    with LiveServer(app, host="127.0.0.4") as server:
        backend.enqueue("never", delay=30)  # stuck before any byte: the status still says so
        t0 = time.monotonic()
        r = post(server, "/api", json={"messages": [USER], "stream": False})
        assert r.status_code == 504 and seed_error(r) == limit and time.monotonic() - t0 < 2
        backend.enqueue("never", delay=30)
        r = post(server, json={"messages": [USER], "stream": True})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        # Stuck after the stream started: an error event, then the stream ends.
        backend.enqueue("a", "b", Exception("unreached"), delay=0.3)
        r = post(server, "/api", json={"messages": [USER]})
        assert r.status_code == 200 and r.text.endswith('data: {"error":"' + limit + '"}\n\n')
        assert '"content":"a"' in r.text
        r = post(server, "/api", json={"messages": [USER], "stream": False})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert backend.running == 0 and backend.cancelled == 3


def test_stuck_upstream_ends_with_an_error_event_and_the_next_request_is_served():
    from gptoss_space.backends.proxy.backend import ProxyBackend
    from tests.support.upstream import Reply, Upstream

    with Upstream(Reply(content=["a", "b", "c"], stall_after=1), default=Reply(content=["fine"])) as up:
        settings = make_settings(backend="proxy", upstream_url=up.url, upstream_read_timeout_s=30, request_timeout_s=0.5)
        app = create_app(settings, backend=ProxyBackend(settings), with_ui=False)
        with LiveServer(app, host="127.0.0.5", ready_path="/api") as server:
            t0 = time.monotonic()
            r = post(server, "/api", json={"messages": [USER]})
            assert r.status_code == 200 and time.monotonic() - t0 < 2
            assert r.text.endswith('data: {"error":"Generation took longer than the 0.5 s limit"}\n\n')
            r = post(server, "/api", json={"messages": [USER], "stream": False})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
        assert up.requests[0].disconnected  # the stuck upstream request was closed, not left open
