"""Clients that leave: the model is freed within a piece or two, queued requests never run, nothing is left behind."""

from __future__ import annotations

import asyncio
import random
import time

import httpx
import pytest

from gptoss_space.backends.base import Backend
from soak.app import build
from tests.conftest import make_settings
from tests.support.servers import LiveServer


@pytest.fixture
def soak_server():
    """The app over the directive-driven backend, per-client gate on (100/s, no pacing, 4 waiting)."""
    settings = make_settings(
        rate_limit_enabled=True, rate_limit_per_second=100, rate_limit_min_interval_ms=0, rate_limit_queue_per_client=4
    )
    app = build(settings)
    with LiveServer(app, host="127.0.0.1") as server:
        server.app = app
        server.backend = app.state.service.backend
        yield server


def ask(directive: str, **body) -> dict:
    return {"messages": [{"role": "user", "content": f"[soak {directive}]"}], **body}


async def read_then_leave(client: httpx.AsyncClient, url: str, body: dict, events: int) -> float:
    """Stream, read `events` data lines, close the connection; returns when it closed (time.monotonic)."""
    seen = 0
    async with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if seen >= events:
                    break
    return time.monotonic()


async def until(predicate, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


def stats(server, **params) -> dict:
    return httpx.get(server.url + "/_soak/stats", params=params, timeout=10).json()


async def test_dropped_streams_free_the_backend_within_a_piece_or_two(soak_server):
    backend = soak_server.backend
    closes: dict[str, tuple[float, int]] = {}

    async def one(i: int) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.9.{i + 1}")
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            k = 1 + i % 4
            closed = await read_then_leave(client, soak_server.url + "/api", ask(f"id=d{i} pieces=300 delay=0.02"), k)
            closes[f"d{i}"] = (closed, k)

    await asyncio.gather(*(one(i) for i in range(8)))
    assert await until(lambda: backend.running == 0)
    for rid, (closed, read) in closes.items():
        assert rid in backend.cancelled_ids
        # Pieces made in all: those read, the one in flight, and at most one more while the server noticed.
        assert backend.yielded[rid] <= read + 2, (rid, backend.yielded[rid], read)
        assert backend.ended_at[rid] - closed < 0.25
    usage = soak_server.app.state.service.stats()
    assert usage["cancelled"] == 8 and usage["completed"] == 0
    assert stats(soak_server)["gate"]["requests_running"] == 0


async def test_a_queued_request_whose_client_left_never_runs(soak_server):
    backend = soak_server.backend
    async with httpx.AsyncClient(timeout=10) as client:
        first = asyncio.create_task(client.post(soak_server.url + "/api", json=ask("id=first pieces=10 delay=0.05", stream=False)))
        assert await until(lambda: "first" in backend.started_ids)
        # Same client: these wait behind "first". Both leave while waiting.
        with pytest.raises(httpx.ReadTimeout):
            await client.post(soak_server.url + "/api", json=ask("id=gone1", stream=False), timeout=0.2)
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", soak_server.url + "/api", json=ask("id=gone2"), timeout=0.2) as r:
                await r.aread()
        assert (await first).status_code == 200
        after = await client.post(soak_server.url + "/api", json=ask("id=next", stream=False))
        assert after.status_code == 200
    assert "gone1" not in backend.started_ids and "gone2" not in backend.started_ids
    assert backend.started_ids == ["first", "next"]
    gate = stats(soak_server)["gate"]
    assert gate["requests_queued"] == 0 and gate["requests_running"] == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_leaving_before_the_first_piece_or_mid_json_cancels_generation(soak_server, stream):
    backend = soak_server.backend
    async with httpx.AsyncClient(timeout=10) as client:
        # stream: a slow first piece; non-streaming: a long answer being collected.
        directive = "id=x pieces=2 delay=3" if stream else "id=x pieces=200 delay=0.02"
        t0 = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", soak_server.url + "/api", json=ask(directive, stream=stream), timeout=0.3) as r:
                await r.aread()
    assert await until(lambda: "x" in backend.cancelled_ids, timeout=2)
    assert backend.ended_at["x"] - t0 < 0.8
    assert backend.finished == 0


async def test_many_disconnects_leave_no_task_thread_or_slot_behind(soak_server):
    import threading

    def threads() -> list[str]:
        # Not the event loops' default executors ("asyncio_N"): a bounded pool the test's own
        # client loop uses for getaddrinfo.
        return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))

    before = stats(soak_server, collect=True)
    threads_before = threads()
    rng = random.Random(8)

    async def client_of(i: int) -> None:
        transport = httpx.AsyncHTTPTransport(local_address=f"127.0.8.{i + 1}")
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            for j in range(6):
                kind = rng.choice(["read_then_leave", "timeout_json", "complete", "complete_json"])
                body = ask(f"id=m{i}-{j} pieces=40 delay=0.005")
                if kind == "read_then_leave":
                    await read_then_leave(client, soak_server.url + "/api", body, rng.randint(1, 5))
                elif kind == "timeout_json":
                    try:
                        await client.post(soak_server.url + "/api", json={**body, "stream": False}, timeout=0.05)
                    except httpx.TimeoutException:  # mostly a read timeout; on a busy host connecting can take 50 ms too
                        pass
                else:
                    r = await client.post(soak_server.url + "/api", json={**body, "stream": kind == "complete"})
                    assert r.status_code == 200

    await asyncio.gather(*(client_of(i) for i in range(10)))
    backend = soak_server.backend
    assert await until(lambda: backend.running == 0)
    assert backend.started == backend.finished + backend.cancelled
    assert await until(lambda: stats(soak_server)["tasks"] <= before["tasks"], timeout=3), (stats(soak_server)["tasks"], before["tasks"])
    after = stats(soak_server, collect=True)
    assert after["gate"]["requests_running"] == 0 and after["gate"]["requests_queued"] == 0
    assert threads() == threads_before
    assert after["rss"] - before["rss"] < 20 * 2**20
    usage = after["usage"]
    assert usage["requests"] == usage["completed"] + usage["cancelled"] + usage["failed"]


def test_real_model_stream_dropped_stops_within_two_decode_steps(model_server):
    engine = model_server.service.backend.engine
    body = {"messages": [{"role": "user", "content": "Write a long story about a lighthouse."}], "max_tokens": 200}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", model_server.url + "/api", json=body) as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 3:
                    steps_at_close = engine.steps
                    break
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.active == 0
    assert engine.steps - steps_at_close <= 2, engine.steps - steps_at_close


class EndlessBackend(Backend):
    """Streams 1 KB pieces as fast as they are taken, until cancelled."""

    kind, model_id, ready, native_date = "scripted", "endless", True, False

    def __init__(self):
        self.started = self.cancelled = 0

    async def start(self): ...

    async def close(self): ...

    def health(self) -> dict:
        return {"backend": "scripted"}

    async def stream(self, req):
        from gptoss_space.backends.base import Delta

        self.started += 1
        try:
            while True:
                yield Delta(content="x" * 1024)
                await asyncio.sleep(0)
        finally:
            self.cancelled += 1


def test_a_client_that_stops_reading_frees_its_generation_after_the_write_timeout():
    """Before: a stream nobody read kept its generation (a batch row) until max_tokens."""
    import socket

    from gptoss_space.http.app import create_app

    backend = EndlessBackend()
    app = create_app(make_settings(stream_write_timeout_s=1.0), backend=backend, with_ui=False)
    with LiveServer(app, host="127.0.0.1") as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        body = b'{"messages":[{"role":"user","content":"go"}],"stream":true}'
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)  # and never reads a byte
        t0 = time.monotonic()
        while backend.cancelled == 0 and time.monotonic() - t0 < 30:
            assert httpx.get(server.url + "/api", timeout=1).status_code == 200  # others are served meanwhile
            time.sleep(0.1)
        freed_after = time.monotonic() - t0
        sock.close()
    assert backend.started == 1 and backend.cancelled == 1
    assert freed_after < 15, freed_after  # the buffers fill in well under a second, then the 1 s timeout
