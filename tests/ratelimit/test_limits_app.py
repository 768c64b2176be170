"""The per-client gate on a real server with real timing: spacing, FIFO, isolation, floods, spoofing."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import httpx
import pytest

from gptoss_space.backends.base import Delta
from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.fakes import ScriptedBackend
from tests.support.servers import LiveServer, rss_mb

BODY = {"messages": [{"role": "user", "content": "hi"}], "stream": False}


class TimedBackend(ScriptedBackend):
    """Records when each request started and ended, keyed by its user message."""

    def __init__(self, hold: float = 0.0):
        super().__init__()
        self.hold = hold
        self.spans: list[tuple[str, float, float]] = []

    async def stream(self, req):
        start = time.monotonic()
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(self.hold)
            yield Delta(content="ok")
            yield Delta(finish_reason="stop", prompt_tokens=1, completion_tokens=1)
        finally:
            self.running -= 1
        self.spans.append((req.messages[-1]["content"], start, time.monotonic()))


@pytest.fixture
def gated():
    backend = TimedBackend()
    app = create_app(
        make_settings(rate_limit_enabled=True, trusted_proxies=["127.0.0.1/32"], rate_limit_idle_evict_s=0.5),
        backend=backend,
        with_ui=False,
    )
    with LiveServer(app, host="127.0.0.1") as server:
        server.backend = backend
        yield server


def client_from(ip: str, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=ip), timeout=30, **kw)


def say(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}], "stream": False}


async def _post(client, url, text, **kw):
    return await client.post(url + "/api", json=say(text), **kw)


def test_back_to_back_requests_start_500ms_apart(gated):
    async def main():
        async with client_from("127.0.0.3") as c:
            first = await _post(c, gated.url, "a")
            second = await _post(c, gated.url, "b")
            return first, second

    first, second = asyncio.run(main())
    assert first.status_code == second.status_code == 200
    starts = {text: start for text, start, _ in gated.backend.spans}
    assert starts["b"] - starts["a"] >= 0.5
    assert float(second.headers["x-queue-time"]) > 0.3  # it waited for its turn rather than failing
    assert first.headers["x-ratelimit-limit"] == "2" and "x-ratelimit-remaining" in first.headers
    assert "x-ratelimit-reset" in first.headers


def test_concurrent_requests_of_one_ip_run_one_after_another_in_order(gated):
    gated.backend.hold = 0.2

    async def main():
        async with client_from("127.0.0.4") as c:
            tasks = []
            for i in range(4):
                tasks.append(asyncio.create_task(_post(c, gated.url, f"r{i}")))
                await asyncio.sleep(0.05)  # a known arrival order
            return await asyncio.gather(*tasks)

    answers = asyncio.run(main())
    assert [a.status_code for a in answers] == [200] * 4
    spans = sorted(gated.backend.spans, key=lambda s: s[1])
    assert [s[0] for s in spans] == ["r0", "r1", "r2", "r3"]
    for (_, _, end), (_, start, _) in zip(spans, spans[1:]):
        assert start >= end  # strictly one after another
    assert gated.backend.max_running == 1


def test_a_second_client_is_not_held_behind_the_first(gated):
    gated.backend.hold = 0.4

    async def main():
        async with client_from("127.0.0.5") as a, client_from("127.0.0.6") as b:
            slow = [asyncio.create_task(_post(a, gated.url, f"a{i}")) for i in range(3)]
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            other = await _post(b, gated.url, "b0")
            waited = time.monotonic() - t0
            await asyncio.gather(*slow)
            return other, waited

    other, waited = asyncio.run(main())
    assert other.status_code == 200
    assert waited < 1.0  # client a's queue holds about 2 s of work
    assert float(other.headers["x-queue-time"]) < 0.2


def test_a_flood_gets_429_for_the_excess_and_every_accepted_request_completes(gated):
    gated.backend.hold = 0.05

    async def main():
        async with client_from("127.0.0.7") as c:
            return await asyncio.gather(*[_post(c, gated.url, f"f{i}") for i in range(20)])

    answers = asyncio.run(main())
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 429}
    assert codes.count(200) == 9  # one running + 8 queued
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.json()["error"].startswith("Rate limit exceeded: ") for a in refused)
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    assert len([s for s in gated.backend.spans if s[0].startswith("f")]) == 9


def test_a_full_queue_still_answers_bad_input_with_400(gated):
    gated.backend.hold = 0.3

    async def main():
        async with client_from("127.0.0.8") as c:
            busy = [asyncio.create_task(_post(c, gated.url, f"q{i}")) for i in range(9)]
            await asyncio.sleep(0.2)
            bad = await c.post(gated.url + "/api", json={"messages": []})
            for t in busy:
                t.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            return bad

    bad = asyncio.run(main())
    assert bad.status_code == 400 and bad.json() == {"error": "Missing messages array"}


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(gated):
    gated.backend.hold = 0.3

    async def burst(ip: str, spoof: bool):
        async with client_from(ip) as c:
            headers = [{"X-Forwarded-For": f"203.0.113.{i}"} if spoof else {} for i in range(3)]
            return await asyncio.gather(*[_post(c, gated.url, f"{ip}-{i}", headers=h) for i, h in enumerate(headers)])

    # 127.0.0.9 is not a trusted proxy here: its three "different" clients are one client, served in turn.
    asyncio.run(burst("127.0.0.9", spoof=True))
    assert gated.backend.max_running == 1
    # 127.0.0.1 is trusted: the addresses it forwards are distinct clients and run side by side.
    gated.backend.max_running = 0
    asyncio.run(burst("127.0.0.1", spoof=True))
    assert gated.backend.max_running >= 2


def test_a_queued_client_that_disconnects_never_runs(gated):
    gated.backend.hold = 0.6

    async def main():
        async with client_from("127.0.0.10") as c:
            running = asyncio.create_task(_post(c, gated.url, "keeps"))
            await asyncio.sleep(0.15)
            queued = asyncio.create_task(_post(c, gated.url, "leaves"))
            await asyncio.sleep(0.15)
            queued.cancel()  # closes the connection while the request waits in the queue
            await asyncio.gather(queued, return_exceptions=True)
            await asyncio.sleep(0.05)
            stats = (await c.get(gated.url + "/api")).json()["rate_limit"]
            await running
            await asyncio.sleep(0.8)
            return stats

    stats = asyncio.run(main())
    assert stats["requests_queued"] == 0  # it left the queue at once
    assert [s[0] for s in gated.backend.spans] == ["keeps"]


def test_idle_client_state_is_evicted(gated):
    async def main():
        async with client_from("127.0.0.11") as c, client_from("127.0.0.12") as d:
            await _post(c, gated.url, "x")
            await _post(d, gated.url, "y")
            during = (await c.get(gated.url + "/api")).json()["rate_limit"]["clients_tracked"]
            await asyncio.sleep(1.2)
            after = (await c.get(gated.url + "/api")).json()["rate_limit"]["clients_tracked"]
            return during, after

    during, after = asyncio.run(main())
    assert during >= 2 and after == 0


async def raw_post(port: int, source_ip: str, body: dict) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 POST /api over a bare connection from source_ip: (status, headers, body)."""
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0))
    writer.write(b"POST /api HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    raw = await reader.read()
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, rest


def _attack_600(port: int) -> list[tuple[int, dict, bytes]]:
    """In a process of its own, as an attacker would be: 600 requests at once from 600 loopback addresses."""

    async def attack():
        return await asyncio.gather(*(raw_post(port, f"127.0.{1 + i // 250}.{2 + i % 250}", say(f"r{i}")) for i in range(600)))

    return asyncio.run(attack())


def test_600_identities_never_run_past_the_global_bound_and_the_rest_get_503():
    """Each client's one request starts at once by the per-client rules; the global bound holds them."""
    backend = TimedBackend(hold=1.5)
    app = create_app(make_settings(rate_limit_enabled=True, max_running=16, rate_limit_queue_total=64), backend=backend,
                     with_ui=False)
    rss0 = rss_mb()
    health_times, running = [], []
    with LiveServer(app, host="127.0.0.1") as server, ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(int).result()  # the attacker's process is up before the clock starts
        attack = pool.submit(_attack_600, server.port)
        with httpx.Client(timeout=5) as c:
            while not attack.done():
                t0 = time.monotonic()
                health = c.get(server.url + "/api").json()
                health_times.append(time.monotonic() - t0)
                running.append(health["rate_limit"]["generations_running"])
                time.sleep(0.05)
        answers = attack.result()
    assert len(health_times) > 10, "the health checks never came back"
    codes = [status for status, _, _ in answers]
    assert codes.count(200) == 16 + 64  # the running ones, then those that waited for a slot
    refused = [(headers, body) for status, headers, body in answers if status == 503]
    assert len(refused) == 600 - 80 and all(headers.get("retry-after") for headers, _ in refused)
    assert json.loads(refused[0][1])["error"].startswith("Server busy")
    assert backend.max_running == 16 and max(running) <= 16
    assert max(health_times) < 1.0, max(health_times)  # other clients are served meanwhile
    assert rss_mb() - rss0 < 200  # the server runs in this process (the attacker does not)
    assert rss_mb() - rss0 < 200
