"""Proxy mode end to end: the whole app on a real server in front of scripted upstreams, and of our own app."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.servers import LiveServer
from tests.support.sse_client import content_of, stream_events
from tests.support.upstream import Reply, Upstream, closed_port_url

KEY = "sk-test-secret"
MODEL = "gpt-oss-20b"
HELLO = {"messages": [{"role": "user", "content": "Hello!"}]}


@contextmanager
def proxy_server(url: str, **overrides):
    """The app (API only) in proxy mode on a real uvicorn server."""
    base = dict(upstream_api_key=KEY, upstream_model=MODEL, upstream_backoff_s=0.1, upstream_connect_timeout_s=1.0,
                upstream_read_timeout_s=2.0)
    settings = make_settings(backend="proxy", upstream_url=url, **{**base, **overrides})
    with LiveServer(create_app(settings, with_ui=False), ready_path="/api") as server:
        yield server


@pytest.fixture(scope="module")
def up():
    with Upstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(up):
    with proxy_server(up.url) as server:
        yield server


@pytest.fixture(autouse=True)
def no_key_in_logs(request, caplog):
    """Every test: a fresh script on the shared upstream, and the key in no log record."""
    caplog.set_level(logging.DEBUG)
    if "up" in request.fixturenames:
        up = request.getfixturevalue("up")
        for recorded in (up.queue, up.requests, up.probes):
            recorded.clear()
        up.default = Reply()
    yield
    assert KEY not in caplog.text


def post(server, path="/api", body=HELLO, **kw) -> httpx.Response:
    return httpx.post(server.url + path, json={**body, **kw}, timeout=10)


def stream(server, path="/api", body=HELLO, **kw):
    with httpx.Client(timeout=10) as client:
        return stream_events(client, server.url + path, {**body, "stream": True, **kw})


def wait_for(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


# -- our format, whatever the upstream sends ------------------------------------------------------

USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
UPSTREAMS = {
    "reasoning_content": Reply(reasoning=["Let me ", "think."], content=["4", "2"]),
    "reasoning": Reply(reasoning=["Let me ", "think."], reasoning_key="reasoning", content=["4", "2"]),
    "usage_chunk": Reply(content=["4", "2"], usage=USAGE),
    "no_done": Reply(content=["4", "2"], done=False, finish_reason=None),
    "plain_json": Reply.completion("42", reasoning=["Let me think."], usage=USAGE),
}


@pytest.mark.parametrize("kind", list(UPSTREAMS))
def test_stream_is_re_emitted_in_our_format(up, proxy, kind):
    up.enqueue(UPSTREAMS[kind])
    resp, events, _ = stream(proxy, stream_options={"include_usage": True})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = events[:-1]
    assert len({(c["id"], c["created"]) for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["id"] != "chatcmpl-upstream"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    assert content_of(events) == "42"
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning", "") for d in deltas) == ("Let me think." if UPSTREAMS[kind].reasoning else "")
    assert all(d.get("reasoning") == d.get("reasoning_content") for d in deltas)
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert chunks[-1]["usage"] == USAGE or not UPSTREAMS[kind].usage


def test_non_streaming_json_is_our_completion_and_the_date_reaches_the_upstream(up, proxy):
    up.enqueue(Reply(reasoning=["hmm"], content=["Hi", " there"], usage=USAGE, finish_reason="length"))
    r = post(proxy, "/v1/chat/completions")
    body, sent = r.json(), up.requests[-1].json
    assert r.status_code == 200 and body["object"] == "chat.completion" and body["model"] == MODEL
    assert body["id"].startswith("chatcmpl-") and body["id"] != "chatcmpl-upstream"
    assert body["choices"] == [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "Hi there", "reasoning": "hmm", "reasoning_content": "hmm"}}]
    assert body["usage"] == USAGE
    assert sent["model"] == MODEL and sent["stream"] is True and sent["messages"][1:] == HELLO["messages"]
    system = sent["messages"][0]
    assert system["role"] == "system" and system["content"].endswith("You are a helpful assistant.")
    assert re.match(r"Current date and time: \w+day, \d{2} \w+ \d{4}, \d{2}:\d{2} UTC\.", system["content"])


def test_openai_sdk_against_our_v1(up, proxy):
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0, timeout=10)
    up.enqueue(Reply(content=["Hel", "lo"]), Reply.completion("Whole"), Reply.fail(400, "temperature must be <= 2"))
    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO["messages"], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].model == MODEL
    done = client.chat.completions.create(model=MODEL, messages=HELLO["messages"])
    assert done.choices[0].message.content == "Whole" and done.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO["messages"])
    assert e.value.status_code == 400 and "temperature must be <= 2" in e.value.message
    # The upstream gets the proxy's key, never our client's.
    assert {r.authorization for r in up.requests} == {f"Bearer {KEY}"}


# -- retries, failures and streaming -----------------------------------------------------------


def test_retries_with_growing_gaps_then_success_or_502(up, proxy, caplog):
    up.enqueue(Reply.fail(503, "warming up"), Reply.fail(500, "still warming"))
    resp, events, _ = stream(proxy)
    assert resp.status_code == 200 and content_of(events) == "Hello world" and events[-1] == "[DONE]"
    assert up.attempts == 3
    g1, g2 = up.gaps()
    assert 0.1 <= g1 < 0.6 and 0.2 <= g2 < 0.9 and g2 > g1  # 0.1 s, then doubled
    assert "attempt 2/3 failed: HTTP 500: still warming" in caplog.text  # the server's log is captured (and checked)
    up.requests.clear()
    up.default = Reply.fail(500, "model crashed")
    t0 = time.monotonic()
    r = post(proxy)  # /api streams by default: the error still comes before any byte, with its status
    assert r.status_code == 502 and up.attempts == 3
    assert r.json() == {"error": "Upstream unavailable after 3 attempts: HTTP 500: model crashed"}
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("value", ["120", "inf", "1e400", "soon"])
def test_a_long_retry_after_is_passed_on_and_nonsense_ignored(up, proxy, value):
    up.enqueue(Reply.fail(429, "quota", retry_after=value))
    t0 = time.monotonic()
    r = post(proxy, stream=False)
    assert time.monotonic() - t0 < 1  # never waited for
    if value == "120":
        assert (r.status_code, r.headers["retry-after"], up.attempts) == (503, "120", 1) and "quota" in r.json()["error"]
    else:
        assert (r.status_code, up.attempts) == (200, 2)  # retried after the backoff, not a 500


def test_upstream_400_is_our_400_with_its_message(up, proxy):
    up.default = Reply.fail(400, "temperature must be <= 2")
    r = post(proxy)
    assert (r.status_code, r.json(), up.attempts) == (400, {"error": "temperature must be <= 2"}, 1)
    err = post(proxy, "/v1/chat/completions").json()["error"]
    assert err["message"] == "temperature must be <= 2" and err["type"] == "invalid_request_error"


def test_upstream_down_is_503_in_bounded_time_and_health_says_unreachable():
    with proxy_server(closed_port_url()) as server:
        t0 = time.monotonic()
        r = post(server)
        assert 0.3 <= time.monotonic() - t0 < 3  # waited 0.1 + 0.2 between the attempts
        assert (r.status_code, r.json()) == (503, {"error": "Upstream unavailable after 3 attempts: connection refused"})
        err = post(server, "/v1/chat/completions").json()["error"]
        assert err["type"] == "upstream_error" and "connection refused" in err["message"]
        health = httpx.get(server.url + "/api", timeout=5).json()
    assert health["backend"] == "proxy" and health["details"]["upstream_reachable"] is False


def test_cut_stream_ends_with_an_error_event_and_no_retry(up, proxy):
    up.enqueue(Reply(content=["a", "b", "c", "d"], cut_after=2))
    t0 = time.monotonic()
    resp, events, _ = stream(proxy)
    assert resp.status_code == 200 and time.monotonic() - t0 < 2
    assert content_of(events) == "ab" and "[DONE]" not in events
    assert events[-1] == {"error": "Upstream stream interrupted: connection closed by the upstream"}
    assert up.attempts == 1 and up.requests[0].cut


def test_slow_upstream_is_504_and_a_stall_ends_the_stream(up):
    with proxy_server(up.url, upstream_read_timeout_s=0.3) as server:
        up.default = Reply(delay_s=5)
        t0 = time.monotonic()
        r = post(server, stream=False)
        assert r.status_code == 504 and "read timeout" in r.json()["error"] and up.attempts == 3
        assert time.monotonic() - t0 < 2.5  # 3 x 0.3 s, plus 0.1 + 0.2 s between
        assert wait_for(lambda: all(rec.disconnected for rec in up.requests))
        up.default = Reply()
        up.enqueue(Reply(content=["a", "b", "c"], stall_after=1))
        t0 = time.monotonic()
        resp, events, _ = stream(server)
    assert time.monotonic() - t0 < 2 and content_of(events) == "a" and "[DONE]" not in events
    assert "read timeout" in events[-1]["error"] and up.attempts == 4


def test_chunks_pass_through_as_the_upstream_sends_them(up, proxy):
    up.enqueue(Reply(content=list("abcde"), chunk_delay_s=0.2))
    resp, events, times = stream(proxy)
    got = [t for e, t in zip(events, times) if isinstance(e, dict) and e["choices"] and e["choices"][0]["delta"].get("content")]
    sent = [t for t, data in up.requests[0].sent if '"content"' in data and '"content": ""' not in data]
    assert content_of(events) == "abcde" and len(got) == len(sent) == 5
    assert got[0] < sent[-1] - 0.5  # our client had the first chunk long before the upstream sent its last
    assert all(got[i] < sent[i + 1] for i in range(4))  # each one before the upstream sent the next


def test_answers_that_end_cleanly_keep_the_upstream_connection(up, proxy):
    """After [DONE] the end of the body is read, so the next request reuses the connection (no new handshake)."""
    up.enqueue(Reply(content=["4", "2"]), Reply(content=["4", "2"], usage=USAGE), Reply.completion("42"))
    for kw in ({}, {"stream_options": {"include_usage": True}}):
        resp, events, _ = stream(proxy, **kw)
        assert content_of(events) == "42"
    assert post(proxy, stream=False).json()["choices"][0]["message"]["content"] == "42"
    clients = [r.client for r in up.requests]
    assert len(clients) == 3 and clients[0] is not None
    assert len(set(clients)) == 1, f"a new upstream connection per answer: {clients}"


def test_client_disconnect_aborts_the_upstream_request(up, proxy):
    up.enqueue(Reply(content=[f"{i} " for i in range(40)], chunk_delay_s=0.05))
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", proxy.url + "/api", json=HELLO) as resp:
            seen = 0
            for line in resp.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 2:
                    break
    rec = up.requests[-1]
    assert wait_for(lambda: rec.disconnected, timeout=3)
    assert rec.finished is None and len(rec.sent) < 20


def test_client_leaving_before_the_first_byte_aborts_the_upstream_without_a_retry(up, proxy):
    up.enqueue(Reply(delay_s=3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(proxy.url + "/api", json=HELLO, timeout=0.4)
    assert wait_for(lambda: up.requests[0].disconnected, timeout=3)
    time.sleep(0.3)  # a retry would have come after 0.1 s
    assert up.attempts == 1


# -- health and secrets ---------------------------------------------------------------------------


def test_health_shows_the_upstream_host_and_no_answer_shows_the_key(up, proxy):
    up.enqueue(Reply(), Reply.fail(400, f"bad key {KEY}"))
    shown = [post(proxy), post(proxy)]
    up.default = Reply.fail(500, f"upstream echoes {KEY}")
    shown += [post(proxy, stream=False), post(proxy, "/v1/chat/completions")]
    shown += [httpx.get(proxy.url + path, timeout=5) for path in ("/api", "/v1/models")]
    assert [r.status_code for r in shown] == [200, 400, 502, 502, 200, 200]
    assert "bad key ***" in shown[1].json()["error"]
    health = shown[4].json()
    assert health["status"] == "ok" and health["backend"] == "proxy" and health["model"] == MODEL
    assert health["details"] == {"backend": "proxy", "upstream_host": f"127.0.0.1:{up.port}", "upstream_reachable": True}
    for r in shown:
        assert KEY not in r.text and KEY not in repr(r.headers.raw)


def test_proxy_mode_imports_neither_torch_nor_transformers():
    code = (
        "import sys; from gptoss_space.http.app import create_app; from gptoss_space.settings import Settings; "
        "s = Settings(backend='proxy', upstream_url='http://127.0.0.1:9/v1/chat/completions'); "
        "heavy = lambda: [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "create_app(s, with_ui=False); assert not heavy(), ('api', heavy()); "
        "create_app(s); assert not heavy(), ('with the page', heavy())"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).resolve().parents[3])


# -- a real model behind a real proxy -----------------------------------------------------------


def test_real_model_through_the_proxy_equals_the_direct_answer(model_server):
    # The proxy injects no date: the model's server adds it, so both prompts are the same.
    # A real model on a busy 2-core host may take seconds to its first token: a read timeout for that, not 2 s.
    with proxy_server(model_server.url + "/v1/chat/completions", inject_datetime=False, upstream_model="",
                      upstream_read_timeout_s=30.0) as server:
        body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
                "max_tokens": 12, "stream_options": {"include_usage": True}}
        for _ in range(3):
            minute = time.gmtime().tm_min  # the injected date line changes each minute, and with it the prompt
            direct, proxied = stream(model_server, body=body), stream(server, body=body)
            if time.gmtime().tm_min == minute:
                break
    (r1, e1, _), (r2, e2, _) = direct, proxied
    assert r1.status_code == r2.status_code == 200 and e1[-1] == e2[-1] == "[DONE]"
    assert content_of(e2) == content_of(e1) and "Paris" in content_of(e2)
    assert e2[-2]["usage"] == e1[-2]["usage"]  # the model's real token counts came through
    assert e2[0]["model"] == f"127.0.0.1:{model_server.port}" and e2[0]["id"] != e1[0]["id"]
