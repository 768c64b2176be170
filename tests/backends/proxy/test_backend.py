"""The proxy backend against a real scripted upstream on loopback: streaming, retries, errors, secrets."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from gptoss_space.backends.base import Delta, GenerationRequest
from gptoss_space.backends.proxy.backend import ProxyBackend, upstream_host
from gptoss_space.backends.proxy.sse_parse import error_message, parse_retry_after
from gptoss_space.errors import UpstreamError, UpstreamRejected
from gptoss_space.settings import Settings
from tests.support.upstream import Reply, Upstream, closed_port_url, upstream  # noqa: F401  (upstream: fixture)

KEY = "sk-test-S3CRET-key"


def settings(url: str, **kw) -> Settings:
    base = dict(
        backend="proxy",
        upstream_url=url,
        upstream_backoff_s=0.02,
        upstream_connect_timeout_s=1.0,
        upstream_read_timeout_s=2.0,
    )
    return Settings(**{**base, **kw})


@asynccontextmanager
async def proxy(url: str, **kw):
    backend = ProxyBackend(settings(url, **kw))
    await backend.start()
    try:
        yield backend
    finally:
        await backend.close()


def req(**kw) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": "Hi"}], max_tokens=kw.pop("max_tokens", None), **kw)


async def collect(backend: ProxyBackend, request: GenerationRequest | None = None) -> list[Delta]:
    return [d async for d in backend.stream(request or req())]


def text(deltas: list[Delta]) -> str:
    return "".join(d.content for d in deltas)


# -- streaming ------------------------------------------------------------------------------------


async def test_streams_chunks_then_a_final_delta(upstream):
    async with proxy(upstream.url) as p:
        deltas = await collect(p)
    assert [d.content for d in deltas[:-1]] == ["Hello", " world"]
    final = deltas[-1]
    # No usage report: prompt tokens unknown (0), completion tokens = text chunks.
    assert (final.content, final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("", "stop", 0, 2)
    assert upstream.attempts == 1


async def test_request_fields_map_to_the_upstream_body(upstream):
    async with proxy(upstream.url, upstream_model="gpt-oss-20b") as p:
        await collect(p, req(max_tokens=64, temperature=0.2, top_p=0.5, stop=["END"], seed=7,
                             presence_penalty=0.5, frequency_penalty=-0.5, reasoning_effort="high"))
        await collect(p, req())
    full, minimal = upstream.requests[0].json, upstream.requests[1].json
    assert full == {
        "messages": [{"role": "user", "content": "Hi"}], "stream": True, "stream_options": {"include_usage": True},
        "temperature": 0.2, "top_p": 0.5, "model": "gpt-oss-20b", "max_tokens": 64, "stop": ["END"], "seed": 7,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "reasoning_effort": "high",
    }
    assert set(minimal) == {"messages", "stream", "stream_options", "temperature", "top_p", "model"}


async def test_no_model_sent_when_none_configured(upstream):
    async with proxy(upstream.url) as p:
        await collect(p)
        assert p.model_id == upstream_host(upstream.url)
    assert "model" not in upstream.requests[0].json


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
async def test_reasoning_is_passed_as_reasoning(upstream, key):
    upstream.enqueue(Reply(reasoning=["Let me ", "think."], reasoning_key=key, content=["42"]))
    async with proxy(upstream.url) as p:
        deltas = await collect(p)
    assert [(d.reasoning, d.content) for d in deltas[:-1]] == [("Let me ", ""), ("think.", ""), ("", "42")]


async def test_usage_report_and_length_finish(upstream):
    upstream.enqueue(Reply(usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}, finish_reason="length"))
    async with proxy(upstream.url) as p:
        final = (await collect(p))[-1]
    assert (final.finish_reason, final.prompt_tokens, final.completion_tokens) == ("length", 11, 5)


@pytest.mark.parametrize("finish", ["stop", None])
async def test_stream_without_done_ends_cleanly(upstream, finish):
    upstream.enqueue(Reply(done=False, finish_reason=finish))
    async with proxy(upstream.url) as p:
        deltas = await collect(p)
    assert text(deltas) == "Hello world" and deltas[-1].finish_reason == "stop"


async def test_sse_sent_as_text_plain_is_still_parsed(upstream):
    upstream.enqueue(Reply(content_type="text/plain"))
    async with proxy(upstream.url) as p:
        assert text(await collect(p)) == "Hello world"


async def test_plain_json_answer_to_a_stream_request(upstream):
    upstream.enqueue(
        Reply.completion("All at once", reasoning=["hmm"], usage={"prompt_tokens": 3, "completion_tokens": 4}),
        Reply.completion("12345678"),
    )
    async with proxy(upstream.url) as p:
        first, second = await collect(p), await collect(p)
    assert [(d.reasoning, d.content) for d in first[:-1]] == [("hmm", "All at once")]
    assert (first[-1].prompt_tokens, first[-1].completion_tokens) == (3, 4)
    assert text(second) == "12345678" and second[-1].completion_tokens == 2  # ~4 characters a token


async def test_deltas_pass_through_as_they_arrive(upstream):
    upstream.enqueue(Reply(content=["a", "b", "c", "d", "e"], chunk_delay_s=0.15))
    got: list[float] = []
    async with proxy(upstream.url) as p:
        async for _d in p.stream(req()):
            got.append(time.monotonic())
    sent = [t for t, data in upstream.requests[0].sent if '"content": "' in data and '"content": ""' not in data]
    assert len(sent) == 5 and len(got) == 6
    assert got[0] < sent[-1] - 0.4  # the first Delta reached us long before the upstream sent its last chunk
    assert all(got[i] < sent[i + 1] for i in range(4))  # each one before the upstream sent the next


async def test_concurrent_streams_share_the_client(upstream):
    upstream.default = Reply(content=["x", "y", "z"], chunk_delay_s=0.05)
    async with proxy(upstream.url) as p:
        results = await asyncio.gather(*(collect(p) for _ in range(4)))
    assert [text(r) for r in results] == ["xyz"] * 4 and upstream.attempts == 4


# -- retries --------------------------------------------------------------------------------------


async def test_5xx_is_retried_with_growing_backoff(upstream):
    upstream.enqueue(Reply.fail(503), Reply.fail(500))
    async with proxy(upstream.url, upstream_backoff_s=0.15) as p:
        assert text(await collect(p)) == "Hello world"
    assert upstream.attempts == 3
    g1, g2 = upstream.gaps()
    assert 0.15 <= g1 < 0.6 and 0.3 <= g2 < 0.9  # 0.15 s, then doubled


async def test_5xx_exhausted_is_502_with_the_reason(upstream):
    upstream.default = Reply.fail(500, "model crashed")
    t0 = time.monotonic()
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
    assert e.value.status == 502 and upstream.attempts == 3
    assert e.value.message == "Upstream unavailable after 3 attempts: HTTP 500: model crashed"
    assert time.monotonic() - t0 < 2


async def test_retry_after_is_honoured(upstream):
    upstream.enqueue(Reply.fail(429, "slow down", retry_after=1))
    async with proxy(upstream.url) as p:
        assert text(await collect(p)) == "Hello world"
    assert upstream.attempts == 2
    assert 0.95 <= upstream.gaps()[0] < 1.8  # the backoff alone would be 0.02 s


async def test_429_exhausted_is_503_with_retry_after(upstream):
    upstream.default = Reply.fail(429, "slow down", retry_after="0")
    async with proxy(upstream.url, upstream_attempts=2) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
    assert (e.value.status, upstream.attempts) == (503, 2)
    assert e.value.message == "Upstream unavailable after 2 attempts: HTTP 429: slow down"


async def test_long_retry_after_is_passed_on_not_waited(upstream):
    upstream.default = Reply.fail(429, "quota", retry_after=120)
    t0 = time.monotonic()
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
    assert time.monotonic() - t0 < 1 and upstream.attempts == 1
    assert e.value.status == 503 and e.value.headers() == {"Retry-After": "120"}


@pytest.mark.parametrize("shape", ["openai", "seed", "text"])
async def test_4xx_is_not_retried_and_its_message_passed(upstream, shape):
    upstream.default = Reply.fail(400, "temperature must be <= 2", shape=shape)
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamRejected) as e:
            await collect(p)
    assert (e.value.status, e.value.message, upstream.attempts) == (400, "temperature must be <= 2", 1)


async def test_422_status_is_passed_through(upstream):
    upstream.default = Reply.fail(422, "bad field")
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamRejected) as e:
            await collect(p)
    assert (e.value.status, upstream.attempts) == (422, 1)


async def test_upstream_auth_failure_is_our_502_not_the_clients_401(upstream):
    upstream.default = Reply.fail(401, "invalid api key")
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
    assert (e.value.status, upstream.attempts) == (502, 1) and "invalid api key" in e.value.message


async def test_upstream_down_is_503_in_bounded_time():
    t0 = time.monotonic()
    async with proxy(closed_port_url(), upstream_backoff_s=0.05) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
        assert p.health()["upstream_reachable"] is False
    assert e.value.status == 503
    assert e.value.message == "Upstream unavailable after 3 attempts: connection refused"
    assert 0.14 <= time.monotonic() - t0 < 2  # waited 0.05 + 0.1 between the attempts


async def test_cut_before_the_first_delta_is_retried(upstream):
    upstream.enqueue(Reply(cut_after=0))
    async with proxy(upstream.url) as p:
        assert text(await collect(p)) == "Hello world"
    assert upstream.attempts == 2 and upstream.requests[0].cut


async def test_cut_mid_stream_raises_after_yielding_and_is_not_retried(upstream):
    upstream.enqueue(Reply(content=["a", "b", "c", "d"], cut_after=2))
    got: list[str] = []
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamError) as e:
            async for d in p.stream(req()):
                got.append(d.content)
    assert got == ["a", "b"] and upstream.attempts == 1
    assert e.value.status == 502 and e.value.message.startswith("Upstream stream interrupted")


async def test_slow_upstream_times_out_with_504(upstream):
    upstream.default = Reply(delay_s=5)
    t0 = time.monotonic()
    async with proxy(upstream.url, upstream_read_timeout_s=0.3, upstream_attempts=2) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
    assert e.value.status == 504 and "read timeout" in e.value.message and upstream.attempts == 2
    assert time.monotonic() - t0 < 1.5


async def test_upstream_stalling_mid_stream_ends_with_an_error(upstream):
    upstream.enqueue(Reply(content=["a", "b", "c"], stall_after=1))
    got: list[str] = []
    t0 = time.monotonic()
    async with proxy(upstream.url, upstream_read_timeout_s=0.3) as p:
        with pytest.raises(UpstreamError) as e:
            async for d in p.stream(req()):
                got.append(d.content)
    assert got == ["a"] and e.value.status == 502 and "read timeout" in e.value.message
    assert time.monotonic() - t0 < 1.5 and upstream.attempts == 1


async def test_error_event_mid_stream_raises_with_its_message(upstream):
    body = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"error":{"message":"engine died"}}\n\n'
    upstream.enqueue(Reply(body=body, content_type="text/event-stream"))
    got: list[str] = []
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamError) as e:
            async for d in p.stream(req()):
                got.append(d.content)
    assert got == ["a"] and e.value.message == "Upstream error: engine died"


@pytest.mark.parametrize(
    "body, ctype",
    [(b"<html>Welcome to nginx</html>", "text/html"), (b"data: not json\n\n", "text/event-stream"), (b"[1,2]", "application/json")],
)
async def test_answers_that_are_not_completions_are_502_not_retried(upstream, body, ctype):
    upstream.default = Reply(body=body, content_type=ctype)
    async with proxy(upstream.url) as p:
        with pytest.raises(UpstreamError) as e:
            await collect(p)
    assert (e.value.status, upstream.attempts) == (502, 1)


# -- client disconnects ---------------------------------------------------------------------------


async def test_closing_the_stream_early_aborts_the_upstream_request(upstream):
    upstream.enqueue(Reply(content=[f"{i} " for i in range(40)], chunk_delay_s=0.05))
    async with proxy(upstream.url) as p:
        stream = p.stream(req())
        assert (await anext(stream)).content == "0 "
        assert (await anext(stream)).content == "1 "
        await stream.aclose()
        rec = upstream.requests[0]
        assert await upstream.until(lambda: rec.disconnected, timeout=2)
    assert len(rec.sent) < 10 and rec.finished is None


async def test_cancelling_the_consumer_aborts_the_upstream_request(upstream):
    upstream.enqueue(Reply(content=[f"{i} " for i in range(40)], chunk_delay_s=0.05))
    first = asyncio.Event()

    async def consume(p: ProxyBackend) -> None:
        async for _ in p.stream(req()):
            first.set()

    async with proxy(upstream.url) as p:
        task = asyncio.create_task(consume(p))
        await asyncio.wait_for(first.wait(), 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await upstream.until(lambda: upstream.requests[0].disconnected, timeout=2)


async def test_an_anyio_cancel_scope_aborts_the_upstream_request(upstream):
    # Starlette's StreamingResponse cancels its task group when the client disconnects.
    upstream.enqueue(Reply(content=[f"{i} " for i in range(40)], chunk_delay_s=0.05))
    first = asyncio.Event()

    async def consume(p: ProxyBackend) -> None:
        async for _ in p.stream(req()):
            first.set()

    async with proxy(upstream.url) as p:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume, p)
            await asyncio.wait_for(first.wait(), 2)
            tg.cancel_scope.cancel()
        assert await upstream.until(lambda: upstream.requests[0].disconnected, timeout=2)


# -- secrets and health ---------------------------------------------------------------------------


async def test_key_is_sent_as_bearer_and_never_shown(upstream):
    upstream.enqueue(Reply(), Reply.fail(400, f"bad key {KEY}"))
    upstream.default = Reply.fail(500, f"upstream echoes {KEY}")
    url = upstream.url + "?token=QUERY-S3CRET"
    errors: list[str] = []
    async with proxy(url, upstream_api_key=KEY) as p:
        await collect(p)
        for _ in range(2):
            with pytest.raises((UpstreamError, UpstreamRejected)) as e:
                await collect(p)
            errors += [e.value.message, str(e.value), repr(e.value.body("openai"))]
        assert await p.check(max_age_s=0) is True  # a probe, though traffic just showed it reachable
        shown = repr(p.health()) + repr(p.model_id) + " ".join(errors)
    assert upstream.requests[0].authorization == f"Bearer {KEY}"
    assert upstream.probes[0].authorization == f"Bearer {KEY}"
    assert "bad key ***" in errors[0]
    assert KEY not in shown and "S3CRET" not in shown
    assert p.health()["upstream_host"] == f"127.0.0.1:{upstream.port}"


async def test_health_check_probes_and_caches(upstream):
    p = ProxyBackend(settings(upstream.url))
    assert await p.check() is None and p.health() == {
        "backend": "proxy", "upstream_host": upstream_host(upstream.url), "upstream_reachable": None}
    await p.start()
    try:
        assert p.ready and await p.check() is True and await p.check() is True
        assert len(upstream.probes) == 1 and upstream.attempts == 0  # cached; probes are not attempts
        assert p.health()["upstream_reachable"] is True
    finally:
        await p.close()
    assert not p.ready


async def test_health_check_of_a_dead_upstream_is_false_and_fast():
    async with proxy(closed_port_url()) as p:
        t0 = time.monotonic()
        assert await p.check() is False
        assert time.monotonic() - t0 < 2


async def test_health_check_treats_5xx_as_unreachable():
    with Upstream(probe_status=502) as up:
        async with proxy(up.url) as p:
            assert await p.check() is False


def test_bad_upstream_url_is_a_config_error():
    for url in ["", "localhost:8000/v1/chat/completions", "ftp://x/y"]:
        with pytest.raises(ValueError):
            ProxyBackend(settings(url))


def test_error_messages_are_extracted_from_common_shapes():
    assert error_message('{"error": "Missing messages array"}') == "Missing messages array"
    assert error_message('{"error": {"message": "bad", "type": "x"}}') == "bad"
    assert error_message('{"detail": [{"loc": ["body"], "msg": "field required"}]}') == "field required"
    assert error_message("plain\n  text") == "plain text"
    assert error_message("<html><body>502 Bad Gateway</body></html>") == ""


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0  # a past date: now


def test_importing_the_proxy_backend_does_not_import_torch():
    code = (
        "import sys, gptoss_space.backends.proxy.backend as p; "
        "p.ProxyBackend; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[3])
