"""What a hostile client finds (issue 14): every entry, the page's Gradio routes included, is bounded.

Each attack runs against a real server on loopback while another client watches: GET /api must
answer within 1 s throughout, and this process (the server runs in it, in a thread) must not grow
by more than 200 MB.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import pytest

from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer, raw_exchange, rss_mb

HEALTH_BOUND_S = 1.0
RSS_BOUND_MB = 200
HI = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


class Watch:
    """GET /api every 50 ms on its own connection while the attack runs; the slowest answer and the RSS growth."""

    def __init__(self, server: LiveServer):
        self.url = server.url + "/api"
        self.slowest = 0.0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = c.get(self.url).status_code
                    if status != 200:
                        self.failures.append(str(status))
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                self.slowest = max(self.slowest, time.monotonic() - started)
                self._stop.wait(0.05)

    def __enter__(self) -> Watch:
        self.rss_before = self.rss_peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.grew_mb = rss_mb() - self.rss_before
        if exc[0] is None:
            assert not self.failures, self.failures
            assert self.slowest < HEALTH_BOUND_S, f"GET /api took {self.slowest:.2f} s during the attack"
            assert self.grew_mb < RSS_BOUND_MB, f"the server grew by {self.grew_mb:.0f} MB"
        print(f"health slowest {self.slowest * 1000:.0f} ms, RSS grew {self.grew_mb:.0f} MB")


@pytest.fixture(scope="module")
def page_server():
    """The whole app, page mounted, over the scripted backend; default limits (1 MB bodies, 200,000 characters)."""
    backend = ScriptedBackend()
    app = create_app(make_settings(header_timeout_s=1.0, body_read_timeout_s=1.0), backend=backend)
    with LiveServer(app, ready_path="/api") as server:
        server.backend = backend
        yield server


def raw(server: LiveServer, data: bytes, *, source: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    return raw_exchange(server, [data], source=source, timeout=timeout)


def chat_args(system_prompt: str = "", *, temperature=0.5, max_tokens=16) -> list:
    # /chat's parameters: message, history, temperature, top_p, max_tokens, system_prompt, inject_datetime, effort
    return ["hi", None, temperature, 0.9, max_tokens, system_prompt, False, "low"]


# -- 1. one bounds check for every entry ---------------------------------------------------------


def test_a_5_mb_system_prompt_through_the_page_is_refused_before_it_is_read(page_server):
    body = json.dumps({"data": chat_args("x" * 5_000_000)}).encode()
    with Watch(page_server):
        for path in ("/gradio_api/call/chat", "/gradio_api/run/chat", "/gradio_api/queue/join"):
            r = httpx.post(page_server.url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
            assert r.status_code == 413 and "too large" in r.json()["error"], (path, r.text[:200])
        # Streamed, without a Content-Length: counted as it arrives.
        parts = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
        r = httpx.post(page_server.url + "/gradio_api/call/chat", content=parts, timeout=10)
        assert r.status_code == 413


def test_the_page_system_prompt_counts_against_the_character_limit(page_server):
    """Under the body limit but over max_total_chars (200,000): refused as the same request through /api would be."""
    r = httpx.post(page_server.url + "/gradio_api/run/chat", json={"data": chat_args("y" * 300_000)}, timeout=10)
    assert r.status_code == 400 and "limit is 200000" in r.json()["error"]


# -- 2. bad input is a 4xx on every route ----------------------------------------------------------


def test_an_integer_of_4301_digits_is_400(page_server):
    for path, field in (("/api", "seed"), ("/v1/chat/completions", "max_tokens"), ("/api", "temperature")):
        body = json.dumps(HI)[:-1].encode() + f', "{field}": {"9" * 4301}}}'.encode()
        r = httpx.post(page_server.url + path, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "too many digits" in json.dumps(r.json()), (path, r.text)


@pytest.mark.parametrize(
    "args, message",
    [
        (chat_args(max_tokens="abc"), "Invalid 'max_tokens'"),
        (chat_args(temperature="NaN"), "Invalid 'temperature'"),
        (chat_args(temperature=1e309), "Invalid 'temperature'"),  # JSON Infinity
        (chat_args(temperature=7), "Invalid 'temperature'"),
        (chat_args(system_prompt=None) [:5] + [["not", "text"], False, "low"], "Invalid 'system_prompt'"),
    ],
)
def test_bad_page_parameters_are_400_with_a_readable_message(page_server, args, message):
    body = json.dumps({"data": args}, allow_nan=True).replace("1e309", "Infinity").encode()
    r = httpx.post(page_server.url + "/gradio_api/run/chat", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"], r.text
    assert "Traceback" not in r.text and "ValueError" not in r.text


def test_unknown_page_endpoints_are_404(page_server):
    for path in ("/gradio_api/run/nope", "/gradio_api/call/nope"):
        r = httpx.post(page_server.url + path, json={"data": ["hi"]})
        assert r.status_code == 404 and r.json() == {"error": "No such page endpoint; see /gradio_api/info"}


def test_a_rate_limited_page_call_is_429_with_retry_after():
    backend = ScriptedBackend()
    settings = make_settings(rate_limit_enabled=True, rate_limit_queue_per_client=0, rate_limit_min_interval_ms=60_000)
    app = create_app(settings, backend=backend)
    with LiveServer(app, ready_path="/api") as server:
        first = httpx.post(server.url + "/gradio_api/run/chat", json={"data": chat_args()})
        again = httpx.post(server.url + "/gradio_api/run/chat", json={"data": chat_args()})
    assert first.status_code == 200
    assert again.status_code == 429 and "Rate limit" in again.json()["error"] and int(again.headers["retry-after"]) >= 1


def test_a_message_without_content_is_400(page_server):
    for role in ("user", "system", "assistant"):
        body = {"messages": [{"role": role}, {"role": "user", "content": "hi"}], "stream": False}
        r = httpx.post(page_server.url + "/v1/chat/completions", json=body)
        err = r.json()["error"]
        assert r.status_code == 400 and err["param"] == "messages[0]" and "needs 'content'" in err["message"]


# -- 3. unknown API paths keep our shape -----------------------------------------------------------


def test_unknown_paths_and_wrong_methods_under_api_and_v1_answer_in_our_shape(page_server):
    u = page_server.url
    r = httpx.post(u + "/v1/nope", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(u + "/api/nope")
    assert r.status_code == 404 and r.json() == {"error": "No route for GET /api/nope"}
    r = httpx.delete(u + "/api")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST" and "DELETE" in r.json()["error"]
    r = httpx.get(u + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"
    assert httpx.get(u + "/").status_code == 200  # the page still answers everything else


# -- 4. X-Forwarded-Host -----------------------------------------------------------------------------


def test_x_forwarded_host_from_an_untrusted_peer_never_reaches_the_page(page_server):
    r = httpx.get(page_server.url + "/", headers={"x-forwarded-host": "evil.example", "x-forwarded-proto": "https"})
    assert r.status_code == 200 and "evil.example" not in r.text
    assert r.headers["cache-control"] == "no-store" and "X-Forwarded-Host" in r.headers["vary"]
    config = httpx.get(page_server.url + "/config", headers={"x-forwarded-host": "evil.example"}).text
    assert "evil.example" not in config


def test_x_forwarded_host_from_a_trusted_proxy_is_believed():
    app = create_app(make_settings(trusted_proxies=["127.0.0.1/32"]), backend=ScriptedBackend())
    with LiveServer(app, ready_path="/api") as server:
        r = httpx.get(server.url + "/config", headers={"x-forwarded-host": "me-app.hf.space", "x-forwarded-proto": "https"})
    assert "https://me-app.hf.space" in r.text


# -- 5. client identity ------------------------------------------------------------------------------


def test_a_private_peer_cannot_choose_its_identity_with_x_forwarded_for():
    """127.0.0.2 sends a different X-Forwarded-For each time: by default nobody is trusted, it is one client."""
    settings = make_settings(rate_limit_enabled=True, rate_limit_queue_per_client=0, rate_limit_min_interval_ms=60_000)
    app = create_app(settings, backend=ScriptedBackend(), with_ui=False)
    with LiveServer(app) as server, httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as c:
        codes = [c.post(server.url + "/api", json=HI, headers={"x-forwarded-for": f"203.0.113.{i}"}).status_code for i in range(3)]
    assert codes == [200, 429, 429]


def test_a_10_mb_x_forwarded_for_is_refused_without_stalling_anyone(page_server):
    head = b"GET /api HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + b"1.2.3.4, " * 1_200_000 + b"\r\n\r\n"
    with Watch(page_server):
        started = time.monotonic()
        answer = raw(page_server, head)
        took = time.monotonic() - started
    assert not answer.startswith(b"HTTP/1.1 200") and took < 2.0, (answer[:100], took)


# -- 6. slow clients ----------------------------------------------------------------------------------


def test_a_client_trickling_its_headers_is_closed_after_header_timeout(page_server):
    with socket.create_connection((page_server.host, page_server.port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(b"GET /api HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(20):
                time.sleep(0.2)
                s.sendall(b"X-Slow: 1\r\n")
        except OSError:
            pass
        assert s.recv(100) == b""  # closed, no answer
    assert time.monotonic() - started < 3.0  # header_timeout_s is 1 here


def test_a_stalled_body_on_a_page_route_is_408(page_server):
    head = b"POST /gradio_api/call/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    started = time.monotonic()
    answer = raw(page_server, head)
    assert answer.startswith(b"HTTP/1.1 408") and b"not received within 1 s" in answer
    assert time.monotonic() - started < 3.0


# -- 7. HTTP/1.0 stream ------------------------------------------------------------------------------


def test_an_http_1_0_stream_is_close_delimited_with_one_connection_header(page_server):
    body = json.dumps({**HI, "stream": True}).encode()
    head = b"POST /api HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = raw(page_server, head + body)
    headers, _, rest = answer.partition(b"\r\n\r\n")
    lines = [line.lower() for line in headers.split(b"\r\n")]
    assert lines[0].startswith(b"http/1.1 200")
    assert [line for line in lines if line.startswith(b"connection:")] == [b"connection: close"]
    assert not any(line.startswith(b"transfer-encoding") for line in lines)
    assert rest.startswith(b"data: {") and rest.rstrip().endswith(b"data: [DONE]")


# -- 8. uploads -----------------------------------------------------------------------------------------


def test_uploads_are_refused_whatever_their_size(page_server):
    r = httpx.post(page_server.url + "/gradio_api/upload", files={"files": ("a.txt", b"small")})
    assert r.status_code == 403 and r.json() == {"error": "Uploads are not accepted here"}
    head = (b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 200000000\r\n\r\n")
    with Watch(page_server):
        answer = raw(page_server, head + b"x" * 1_000_000)
    assert answer.startswith(b"HTTP/1.1 403")


def test_page_calls_nobody_reads_stop_generating_and_free_their_slots():
    """Before: calls posted to /gradio_api/call/chat and never read ran on (and queued) until shutdown."""
    from tests.http.test_disconnects import EndlessBackend

    backend = EndlessBackend()
    app = create_app(make_settings(), backend=backend)
    with LiveServer(app, ready_path="/api") as server, Watch(server):
        for _i in range(4):
            r = httpx.post(server.url + "/gradio_api/call/chat", json={"data": chat_args(max_tokens=-1)}, timeout=10)
            assert r.status_code == 200 and r.json()["event_id"]  # and the result is never fetched
        t0 = time.monotonic()
        while backend.cancelled < 4 and time.monotonic() - t0 < 20:
            time.sleep(0.1)
        assert (backend.started, backend.cancelled) == (4, 4)
        rate = httpx.get(server.url + "/api").json()["rate_limit"]
        assert rate["generations_running"] == 0


def test_3000_unread_page_calls_are_bounded_in_memory():
    """Before: 3,000 unread Gradio calls grew the server from 0.17 to 1 GB."""
    backend = ScriptedBackend()
    app = create_app(make_settings(), backend=backend)
    with LiveServer(app, ready_path="/api") as server, Watch(server) as watch:
        codes: dict[int, int] = {}
        with httpx.Client(timeout=10) as c:
            for _ in range(3000):
                r = c.post(server.url + "/gradio_api/call/chat", json={"data": chat_args()})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
        assert set(codes) <= {200, 503}, codes  # accepted, or refused once Gradio's bounded queue is full
    assert watch.grew_mb < 200


def test_a_100kb_header_arriving_at_once_is_431_in_our_shape(page_server):
    """h11 bounds a head only while it is incomplete; one that arrives in one read is refused before any route."""
    xff = ", ".join(f"10.{i % 250}.{i % 200}.1" for i in range(9000))
    for path, shape in (("/api", str), ("/v1/chat/completions", dict)):
        r = httpx.post(page_server.url + path, json=HI, headers={"x-forwarded-for": xff}, timeout=10)
        assert r.status_code == 431 and isinstance(r.json()["error"], shape), r.text
        assert "headers too large" in json.dumps(r.json())
