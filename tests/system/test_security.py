"""No secret in health, errors or logs; prompts and answers logged only on request; headers browsers expect."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from gptoss_space.backends.proxy.backend import ProxyBackend
from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer
from tests.support.upstream import Reply, Upstream

KEY = "sk-upstream-S3CRET-7f3a"
HF = "hf_S3CRETtokenABCDEF"
HELLO = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def all_logs():
    """Every record of every logger at DEBUG while the test runs (httpx and uvicorn included)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root, handler = logging.getLogger(), Keep(level=logging.DEBUG)
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def logged_text(records: list[logging.LogRecord]) -> str:
    out = []
    for r in records:
        out.append(r.getMessage())
        if r.exc_info:
            out.append(logging.Formatter().formatException(r.exc_info))
    return "\n".join(out)


def test_no_secret_in_health_errors_or_logs(all_logs):
    replies = [
        Reply(content=["fine"]),
        Reply.fail(400, f"bad key {KEY}"),
        Reply.fail(401, f"Unauthorized: {KEY}"),
        Reply(body=f'data: {{"error": {{"message": "engine died holding {KEY}"}}}}\n\n'.encode(), content_type="text/event-stream"),
    ]
    with Upstream(*replies, default=Reply.fail(500, f"upstream echoes {KEY}")) as up:
        settings = make_settings(backend="proxy", upstream_url=up.url, upstream_api_key=KEY, hf_token=HF,
                                 upstream_attempts=2, upstream_backoff_s=0.01)
        app = create_app(settings, backend=ProxyBackend(settings), with_ui=False)
        shown = []
        with LiveServer(app, host="127.0.0.6", ready_path="/api") as server:
            with httpx.Client(timeout=10) as client:
                shown.append(client.get(server.url + "/api").text)
                for path in ("/api", "/v1/chat/completions", "/api", "/api", "/v1/chat/completions"):
                    r = client.post(server.url + path, json={**HELLO, "stream": path == "/api"})
                    shown.append(f"{r.status_code} {r.headers} {r.text}")
                shown.append(client.get(server.url + "/openapi.json").text)
        assert up.requests[0].authorization == f"Bearer {KEY}"  # the key was in use all along
    everything = "\n".join(shown) + logged_text(all_logs)
    assert "fine" in everything and "400" in everything  # the answers and errors did happen
    assert KEY not in everything and HF not in everything and "S3CRET" not in everything


def test_prompts_and_answers_are_logged_only_when_log_content_asks(all_logs):
    prompt, answer = "PROMPT-marker-4411", "ANSWER-marker-9922"
    for log_content in (False, True):
        all_logs.clear()
        backend = ScriptedBackend()
        app = create_app(make_settings(log_content=log_content), backend=backend, with_ui=False)
        with LiveServer(app, host="127.0.0.7") as server:
            for stream in (False, True):
                backend.enqueue(answer)
                body = {"messages": [{"role": "user", "content": prompt}], "stream": stream}
                assert httpx.post(server.url + "/api", json=body, timeout=10).status_code == 200
            assert httpx.post(server.url + "/api", json={"messages": [{"role": "wizard", "content": prompt}]}).status_code == 400
        text = logged_text(all_logs)
        assert "generation" in text  # sizes and timings are logged either way
        if log_content:
            assert prompt in text and answer in text
        else:
            assert prompt not in text and answer not in text


def test_every_kind_of_response_says_nosniff():
    backend = ScriptedBackend()
    app = create_app(make_settings(rate_limit_enabled=True, rate_limit_queue_per_client=0), backend=backend, with_ui=False)
    with LiveServer(app, host="127.0.0.8") as server:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            backend.enqueue(RuntimeError("unexpected /internal/path"))
            responses = {
                "500 unexpected": c.post("/api", json={**HELLO, "stream": False}),
                "429 rate limited": c.post("/api", json=HELLO),
                "400": c.post("/api", json={}),
                "404": c.get("/nope"),
                "405": c.put("/api"),
                "413": c.post("/api", content=b"x" * 1_000_001),
                "health": c.get("/api"),
                "models": c.get("/v1/models"),
                "openapi": c.get("/openapi.json"),
                "preflight": c.options("/api", headers={"Origin": "https://e.org", "Access-Control-Request-Method": "POST"}),
            }
            time.sleep(0.6)  # past the 500 ms spacing
            responses["200 stream"] = c.post("/api", json=HELLO)
    for name, r in responses.items():
        assert r.headers.get("x-content-type-options") == "nosniff", (name, r.status_code, dict(r.headers))
    unexpected = responses["500 unexpected"]
    assert unexpected.status_code == 500 and "internal" not in unexpected.text
    assert unexpected.headers["connection"] == "close"  # the server drops it: the next request must not reuse it
    assert responses["200 stream"].headers["content-type"].startswith("text/event-stream")
    assert responses["400"].headers["content-type"] == "application/json"
