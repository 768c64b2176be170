"""The /api and /v1 contract through a real uvicorn server over the scripted backend."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from gptoss_space.backends.base import Delta
from gptoss_space.errors import GenerationFailed
from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer
from tests.support.sse_client import content_of, parse_events, stream_events

HELLO = {"messages": [{"role": "user", "content": "Hello!"}]}


def post(server, path="/api", **kw):
    return httpx.post(server.url + path, timeout=10, **kw)


def test_stream_is_the_default_on_api(scripted_server):
    scripted_server.backend.enqueue("Hel", "lo", " there")
    r = post(scripted_server, json=HELLO)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"].startswith("no-cache")
    assert r.headers["x-accel-buffering"] == "no"
    assert r.text.endswith("data: [DONE]\n\n")
    events = parse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "scripted-model" for c in chunks)
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:3]] == ["Hel", "lo", " there"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:3])
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


def test_alias_and_non_streaming_shape(scripted_server):
    scripted_server.backend.enqueue("I was ", "made here.", finish_reason="length", prompt_tokens=20)
    r = post(scripted_server, "/api/gpt-oss-2t", json={**HELLO, "stream": False, "temperature": 0.8})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "I was made here."}, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}


def test_v1_defaults_to_non_streaming_and_include_usage(scripted_server):
    r = post(scripted_server, "/v1/chat/completions", json=HELLO)
    assert r.json()["choices"][0]["message"]["content"] == "echo: Hello!"
    scripted_server.backend.enqueue("a", "b")
    body = {**HELLO, "stream": True, "stream_options": {"include_usage": True}}
    events = parse_events(post(scripted_server, "/v1/chat/completions", json=body).text)
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 2


def test_reasoning_is_returned_separately(scripted_server):
    scripted_server.backend.enqueue(Delta(reasoning="think"), Delta(content="answer"))
    body = post(scripted_server, json={**HELLO, "stream": False}).json()
    msg = body["choices"][0]["message"]
    assert msg["content"] == "answer" and msg["reasoning"] == msg["reasoning_content"] == "think"


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "Missing messages array"),
        ({"messages": "hi"}, "Missing messages array"),
        ({"messages": []}, "Missing messages array"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 2.5}, "'temperature'"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "'temperature'"),
        ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, "'top_p'"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "'max_tokens'"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6}, "'max_tokens'"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "'stream'"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "'messages[0].role'"),
        ({"messages": [{"role": "user", "content": 7}]}, "'messages[0].content'"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "'n'"),
        ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "'tools[0].function'"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(scripted_server, body, fragment):
    r = post(scripted_server, json=body)
    assert r.status_code == 400
    assert fragment in r.json()["error"]
    if fragment == "Missing messages array":
        assert r.json() == {"error": "Missing messages array"}
    assert scripted_server.backend.started == 0


def test_invalid_json_and_utf8(scripted_server):
    r = post(scripted_server, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("Invalid JSON")
    r = post(scripted_server, content=b'{"messages": "\xff"}')
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    r = post(scripted_server, content=b"")
    assert r.status_code == 400


def test_body_over_the_limit_is_413(scripted_server):
    big = {"messages": [{"role": "user", "content": "x" * 1_100_000}]}
    r = post(scripted_server, json=big)
    assert r.status_code == 413 and "too large" in r.json()["error"]


def test_openai_error_shape_on_v1(scripted_server):
    r = post(scripted_server, "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "top_p": 5})
    err = r.json()["error"]
    assert r.status_code == 400
    assert err["type"] == "invalid_request_error" and err["param"] == "top_p" and "'top_p'" in err["message"]
    assert set(err) == {"message", "type", "param", "code"}


def test_generation_failure_is_500_without_internals(scripted_server):
    scripted_server.backend.enqueue(RuntimeError("secret internal path /etc/x"))
    r = post(scripted_server, json={**HELLO, "stream": False})
    assert r.status_code == 500
    assert "secret" not in r.text and r.json()["error"]


def test_error_after_stream_started_is_an_error_event(scripted_server):
    scripted_server.backend.enqueue("partial", GenerationFailed("Generation failed"))
    events = parse_events(post(scripted_server, json=HELLO).text)
    assert content_of(events) == "partial"
    assert events[-1] == {"error": "Generation failed"}


def test_cors_preflight_and_headers(scripted_server):
    r = httpx.options(
        scripted_server.url + "/api",
        headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", "https://example.org")
    assert "POST" in r.headers["access-control-allow-methods"]
    r = post(scripted_server, json={**HELLO, "stream": False}, headers={"Origin": "https://example.org"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.headers["x-content-type-options"] == "nosniff"


def test_date_and_system_prompt_injection(scripted_server):
    post(scripted_server, json={**HELLO, "stream": False})
    system = scripted_server.backend.requests[-1].messages[0]
    assert system["role"] == "system"
    assert re.match(r"Current date and time: \w+day, \d{2} \w+ \d{4}, \d{2}:\d{2} UTC\.", system["content"])
    assert system["content"].endswith("You are a helpful assistant.")
    body = {"messages": [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "hi"}], "stream": False}
    post(scripted_server, json=body)
    msgs = scripted_server.backend.requests[-1].messages
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"].startswith("Current date and time:") and msgs[0]["content"].endswith("Be a pirate.")


def test_injection_can_be_switched_off():
    backend = ScriptedBackend()
    app = create_app(make_settings(inject_datetime=False, inject_system_prompt=False), backend=backend, with_ui=False)
    with LiveServer(app) as server:
        post(server, json={**HELLO, "stream": False})
    assert backend.requests[-1].messages == [{"role": "user", "content": "Hello!"}]


def test_sampling_fields_reach_the_backend(scripted_server):
    body = {**HELLO, "stream": False, "temperature": 0, "top_p": 0.5, "max_tokens": 7, "stop": "END", "seed": 3}
    post(scripted_server, json=body)
    req = scripted_server.backend.requests[-1]
    assert (req.temperature, req.top_p, req.max_tokens, req.stop, req.seed) == (0, 0.5, 7, ["END"], 3)
    post(scripted_server, json={**HELLO, "stream": False, "max_tokens": -1, "unknown_field": 1})
    req = scripted_server.backend.requests[-1]
    assert (req.temperature, req.top_p, req.max_tokens) == (0.8, 0.9, None)


def test_health_and_models(scripted_server):
    r = httpx.get(scripted_server.url + "/api")
    body = r.json()
    assert r.status_code == 200 and body["status"] == "ok" and body["model"] == "scripted-model"
    assert body["rate_limit"]["enabled"] is False  # the fixture switches the gate off
    assert httpx.get(scripted_server.url + "/api/gpt-oss-2t").status_code == 200
    models = httpx.get(scripted_server.url + "/v1/models").json()
    assert models["data"][0]["id"] == "scripted-model"
    assert httpx.get(scripted_server.url + "/v1/models/nope").status_code == 404


def test_health_is_503_loading_until_ready():
    backend = ScriptedBackend(ready=False)
    app = create_app(make_settings(), backend=backend, with_ui=False)
    with LiveServer(app) as server:
        r = httpx.get(server.url + "/api")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = post(server, json=HELLO)
        assert r.status_code == 503 and "loading" in r.json()["error"] and "retry-after" in r.headers


def test_health_reports_the_rate_limits():
    app = create_app(make_settings(rate_limit_enabled=True), backend=ScriptedBackend(), with_ui=False)
    with LiveServer(app) as server:
        limits = httpx.get(server.url + "/api").json()["rate_limit"]
    assert limits["enabled"] is True
    assert limits["requests_per_second"] == 2.0 and limits["min_interval_ms"] == 500
    assert limits["max_queue_per_client"] == 8


def test_public_model_name_setting():
    backend = ScriptedBackend()
    app = create_app(make_settings(model_name="gpt-oss:latest"), backend=backend, with_ui=False)
    with LiveServer(app) as server:
        assert post(server, json={**HELLO, "stream": False}).json()["model"] == "gpt-oss:latest"


def test_streamed_text_arrives_incrementally(scripted_server):
    scripted_server.backend.enqueue("a", "b", "c", "d", delay=0.15)
    with httpx.Client(timeout=10) as client:
        _, events, times = stream_events(client, scripted_server.url + "/api", HELLO)
    assert content_of(events) == "abcd"
    assert times[3] - times[0] > 0.3  # the pieces were not buffered into one write


@pytest.mark.parametrize("log_content", [False, True])
def test_prompts_and_answers_are_logged_only_when_asked(caplog, log_content):
    backend = ScriptedBackend()
    backend.enqueue("the-answer-text")
    app = create_app(make_settings(log_content=log_content), backend=backend, with_ui=False)
    with caplog.at_level("INFO"), LiveServer(app) as server:
        body = {"messages": [{"role": "user", "content": "my-private-prompt"}], "stream": False}
        assert post(server, json=body).status_code == 200
    logged = caplog.text
    assert "generation stop: 5 prompt + 1 completion tokens" in logged
    assert ("my-private-prompt" in logged) is log_content
    assert ("the-answer-text" in logged) is log_content


def test_an_empty_answer_still_streams_role_and_finish(scripted_server):
    scripted_server.backend.enqueue()
    events = parse_events(post(scripted_server, json=HELLO).text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["finish_reason"] == "stop" and events[2] == "[DONE]"


def test_each_answer_is_logged_once_it_ended_with_status_bytes_and_duration(caplog):
    backend = ScriptedBackend()
    backend.enqueue("a", "b", delay=0.15)
    app = create_app(make_settings(), backend=backend, with_ui=False)
    with caplog.at_level("INFO", logger="gptoss_space.access"), LiveServer(app) as server:
        streamed = post(server, json=HELLO)
        refused = post(server, path="/v1/chat/completions?key=sk-secret", json={"messages": "nope"})
        time.sleep(0.2)  # the line follows the last byte
    lines = [r.getMessage() for r in caplog.records if r.name == "gptoss_space.access"]
    assert len(lines) == 2, lines
    m = re.fullmatch(r'127\.0\.0\.1:\d+ - "POST /api HTTP/1\.1" 200, (\d+) bytes in ([\d.]+) s', lines[0])
    assert m and int(m[1]) == len(streamed.content) and float(m[2]) >= 0.3  # two pieces 0.15 s apart
    assert re.fullmatch(rf'127\.0\.0\.1:\d+ - "POST /v1/chat/completions HTTP/1\.1" 400, {len(refused.content)} bytes in [\d.]+ s', lines[1])
    assert "sk-secret" not in caplog.text
