"""The per-client gate: FIFO order, pacing, bounds, cancellation, eviction, headers."""

from __future__ import annotations

import asyncio
import gc
import heapq
import itertools
import random
import time
import tracemalloc

import pytest

from gptoss_space.errors import APIError, Overloaded, RateLimited
from gptoss_space.ratelimit.fifo import FifoGate, make_gate
from gptoss_space.ratelimit.gate import OpenGate, Ticket
from gptoss_space.settings import Settings


class FakeTime:
    """A virtual clock: sleepers wake in time order only when the test advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    async def advance(self, dt: float) -> None:
        """Move the clock forward by dt, waking each sleeper at its own time."""
        target = self.now + dt
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            at, _, fut = heapq.heappop(self._sleepers)
            self.now = max(self.now, at)
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()

    async def run_until(self, cond, step: float = 0.05, limit: float = 3600.0) -> None:
        start = self.now
        await self.settle()
        while not cond():
            assert self.now - start < limit, "virtual time ran out"
            await self.advance(step)


def settings(**kw) -> Settings:
    return Settings(**kw)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


@pytest.fixture
def gate(ft) -> FifoGate:
    g = FifoGate(settings(), clock=ft.clock, sleep=ft.sleep)
    return g


async def test_back_to_back_acquires_start_min_interval_apart(gate, ft):
    starts = []
    for _ in range(4):
        task = asyncio.ensure_future(gate.acquire("8.8.8.8"))
        await ft.run_until(task.done, step=0.01)
        starts.append(ft.now)
        task.result().release()
    assert starts[0] == 1000.0
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert all(g >= 0.5 - 1e-9 for g in gaps), gaps
    assert all(g <= 0.52 for g in gaps), gaps  # and no slower than needed


async def test_four_concurrent_acquires_run_one_after_another_in_arrival_order(gate, ft):
    events: list[tuple[str, int, float]] = []
    running = 0

    async def request(i: int) -> None:
        nonlocal running
        ticket = await gate.acquire("1.1.1.1")
        running += 1
        assert running == 1, "two requests of one client overlapped"
        events.append(("start", i, ft.now))
        await ft.sleep(0.3)  # the work
        events.append(("end", i, ft.now))
        running -= 1
        ticket.release()

    tasks = []
    for i in range(4):
        tasks.append(asyncio.ensure_future(request(i)))
        await ft.settle()  # arrival order 0, 1, 2, 3
    await ft.run_until(lambda: all(t.done() for t in tasks), step=0.01)
    for t in tasks:
        t.result()
    assert [(kind, i) for kind, i, _ in events] == [(k, i) for i in range(4) for k in ("start", "end")]
    starts = [t for kind, _, t in events if kind == "start"]
    assert all(b - a >= 0.5 - 1e-9 for a, b in itertools.pairwise(starts)), starts


async def test_a_second_client_is_not_held_behind_the_first(gate, ft):
    first = [asyncio.ensure_future(gate.acquire("1.1.1.1")) for _ in range(5)]
    await ft.settle()
    assert first[0].done() and not any(t.done() for t in first[1:])
    other = await asyncio.wait_for(gate.acquire("2.2.2.2"), 1)  # starts at once, no clock movement
    assert other.queued_s == 0.0 and ft.now == 1000.0
    other.release()
    for t in first[1:]:
        t.cancel()
    await ft.settle()
    first[0].result().release()


async def test_flood_gets_429_for_the_excess_and_every_accepted_one_runs(gate, ft):
    results: dict[int, object] = {}

    async def request(i: int) -> None:
        try:
            ticket = await gate.acquire("6.6.6.6")
        except RateLimited as exc:
            results[i] = exc
            return
        results[i] = ticket
        await ft.sleep(0.2)
        ticket.release()

    tasks = []
    for i in range(30):
        tasks.append(asyncio.ensure_future(request(i)))
        await ft.settle()
    refused = sorted(i for i, r in results.items() if isinstance(r, RateLimited))
    assert refused == list(range(9, 30))  # 1 running + 8 waiting accepted, the rest refused at once
    for i in refused:
        exc = results[i]
        assert exc.message.startswith("Rate limit exceeded: ")
        assert exc.status == 429 and exc.retry_after is not None and 0 < exc.retry_after <= 10
        assert int(exc.headers()["Retry-After"]) >= 1
    await ft.run_until(lambda: all(t.done() for t in tasks))
    accepted = [r for r in results.values() if isinstance(r, Ticket)]
    assert len(accepted) == 9 and all(t.released for t in accepted)
    queue_times = [t.queued_s for t in sorted(accepted, key=lambda t: t.queued_s)]
    assert queue_times[0] == 0.0 and queue_times[-1] == pytest.approx(8 * 0.5, abs=0.06)
    assert gate.stats()["requests_queued"] == 0 and gate.stats()["requests_running"] == 0


async def test_retry_after_is_an_honest_estimate(ft):
    g = make_gate(settings(rate_limit_queue_per_client=0), clock=ft.clock, sleep=ft.sleep)
    t = await g.acquire("a")
    await ft.advance(0.1)
    t.release()  # held 0.1 s; the next start may come at 0.5 s
    with pytest.raises(RateLimited) as info:
        await g.acquire("a")  # queue bound 0: must wait 0.4 s, so refused
    assert info.value.retry_after == pytest.approx(0.4, abs=1e-6)
    assert info.value.headers()["X-RateLimit-Reset"] == "0.400"
    assert info.value.headers()["Retry-After"] == "1"
    await ft.advance(0.4)
    (await g.acquire("a")).release()  # exactly when it said


async def test_retry_after_while_running_uses_typical_hold_time(ft):
    g = make_gate(settings(rate_limit_queue_per_client=1), clock=ft.clock, sleep=ft.sleep)
    t = await g.acquire("a")
    await ft.advance(3.0)
    t.release()  # typical hold: 3 s
    await ft.advance(1.0)
    running = await g.acquire("a")
    waiting = asyncio.ensure_future(g.acquire("a"))
    await ft.advance(1.0)
    with pytest.raises(RateLimited) as info:
        await g.acquire("a")
    assert info.value.retry_after == pytest.approx(2.0, abs=1e-6)  # 3 s typical, 1 s in
    running.release()
    await ft.run_until(waiting.done)
    waiting.result().release()


async def test_a_newcomer_never_overtakes_a_woken_waiter(gate, ft):
    held = await gate.acquire("o")
    waiter = asyncio.ensure_future(gate.acquire("o"))
    await ft.advance(2.0)  # pacing long over: the waiter may start the moment the slot frees

    async def serve_waiter() -> None:
        with await waiter:
            await ft.sleep(0.1)

    served = asyncio.ensure_future(serve_waiter())
    got: list[Ticket] = []
    driver = asyncio.ensure_future(ft.run_until(lambda: bool(got)))
    held.release()  # wakes the waiter, which has not run yet when the newcomer arrives:
    got.append(await gate.acquire("o"))  # acquire's checks run before this coroutine yields
    assert waiter.done(), "the newcomer jumped the queue"
    assert got[0].queued_s == pytest.approx(0.5)  # behind the waiter, paced after its start
    got[0].release()
    await driver
    await served


async def test_cancelled_waiter_is_dropped_and_never_gets_a_slot(gate, ft):
    order: list[int] = []

    async def request(i: int) -> None:
        ticket = await gate.acquire("3.3.3.3")
        order.append(i)
        await ft.sleep(0.1)
        ticket.release()

    tasks = []
    for i in range(4):
        tasks.append(asyncio.ensure_future(request(i)))
        await ft.settle()
    assert gate.stats()["requests_queued"] == 3
    tasks[1].cancel()  # the client of request 1 went away while it was queued
    await ft.settle()
    assert tasks[1].cancelled()
    assert gate.stats()["requests_queued"] == 2  # left the queue at once, not when its turn came
    await ft.run_until(lambda: all(t.done() for t in tasks))
    assert order == [0, 2, 3]
    assert gate.stats()["requests_running"] == 0


async def test_cancelling_the_pacing_head_moves_the_next_up(gate, ft):
    (await gate.acquire("c")).release()  # next start not before +0.5 s
    head = asyncio.ensure_future(gate.acquire("c"))
    second = asyncio.ensure_future(gate.acquire("c"))
    await ft.advance(0.2)
    head.cancel()
    await ft.advance(0.3)
    assert second.done() and second.result().queued_s == pytest.approx(0.5)
    second.result().release()


async def test_wait_for_timeout_frees_the_place(gate, ft):
    held = await gate.acquire("d")

    async def impatient() -> None:
        await asyncio.wait_for(gate.acquire("d"), timeout=0.01)  # real-time timeout

    with pytest.raises(asyncio.TimeoutError):
        await impatient()
    assert gate.stats()["requests_queued"] == 0
    held.release()


async def test_release_is_idempotent_and_a_context_manager(gate, ft):
    t = await gate.acquire("e")
    t.release()
    t.release()
    assert gate.stats()["requests_running"] == 0
    await ft.advance(0.5)
    with await gate.acquire("e") as t2:
        assert gate.stats()["requests_running"] == 1
    assert t2.released and gate.stats()["requests_running"] == 0


async def test_idle_client_state_is_evicted(gate, ft):
    t = await gate.acquire("f")
    t.release()
    assert gate.stats()["clients_tracked"] == 1  # its next start is still paced
    await ft.advance(1.0)
    assert gate.stats()["clients_tracked"] == 0
    # A long request: its constraints are over by the time it ends, so nothing is kept.
    t = await gate.acquire("g")
    await ft.advance(5.0)
    t.release()
    assert gate.stats()["clients_tracked"] == 0


async def test_idle_evict_setting_caps_memory_of_long_intervals(ft):
    g = make_gate(settings(rate_limit_min_interval_ms=60_000, rate_limit_idle_evict_s=10), clock=ft.clock, sleep=ft.sleep)
    (await g.acquire("h")).release()
    await ft.advance(9.9)
    assert g.stats()["clients_tracked"] == 1
    await ft.advance(0.2)
    assert g.stats()["clients_tracked"] == 0


async def test_eviction_keeps_the_limits(gate, ft):
    # Evicting must never let a client start sooner than it could have otherwise.
    (await gate.acquire("i")).release()
    await ft.advance(0.49)
    second = asyncio.ensure_future(gate.acquire("i"))
    await ft.settle()
    assert not second.done()
    await ft.advance(0.01)
    assert second.done()
    second.result().release()


async def test_many_distinct_clients_memory_stays_flat(ft):
    g = make_gate(settings(), clock=ft.clock, sleep=ft.sleep)

    async def wave(first: int, n: int) -> int:
        """n new clients, 1000 a second; returns the most clients tracked at once."""
        peak = 0
        for i in range(first, first + n):
            (await g.acquire(f"2001:db8::{i:x}")).release()
            ft.now += 0.001
            if i % 500 == 0:
                peak = max(peak, len(g.inner._clients))
        return peak

    assert await wave(0, 100_000) <= 1001  # only the last second's clients are remembered
    ft.now += 1.0
    assert g.stats()["clients_tracked"] == 0 and len(g.inner._idle) == 0

    # Memory, traced over two more waves: the second costs nothing the first did not.
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await wave(100_000, 5_000)
        after_first = tracemalloc.get_traced_memory()[0]
        await wave(105_000, 10_000)
        after_second = tracemalloc.get_traced_memory()[0]
        ft.now += 1.0
        g.stats()
        gc.collect()
        after_idle = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after_first - base < 800_000  # about 1000 clients' state
    assert abs(after_second - after_first) < 100_000, (after_first - base, after_second - base)
    assert after_idle - base < 300_000, after_idle - base  # only empty dict capacity left


async def test_global_bound_gives_overloaded(ft):
    g = make_gate(settings(rate_limit_queue_total=3), clock=ft.clock, sleep=ft.sleep)
    holders = [await g.acquire(c) for c in "abc"]
    waiters = [asyncio.ensure_future(g.acquire(c)) for c in "abc"]
    await ft.settle()
    assert g.stats()["requests_queued"] == 3
    with pytest.raises(Overloaded) as info:
        await g.acquire("a")
    exc = info.value
    assert exc.status == 503 and exc.message.startswith("Server busy: ")
    assert exc.retry_after and exc.retry_after > 0 and "Retry-After" in exc.headers()
    fresh = await g.acquire("z")  # a request that starts at once does not wait: not refused
    fresh.release()
    for h in holders:
        h.release()
    await ft.run_until(lambda: all(w.done() for w in waiters))
    for w in waiters:
        w.result().release()


async def test_per_client_bound_checked_before_global(ft):
    g = make_gate(settings(rate_limit_queue_per_client=1, rate_limit_queue_total=1), clock=ft.clock, sleep=ft.sleep)
    held = await g.acquire("a")
    waiting = asyncio.ensure_future(g.acquire("a"))
    await ft.settle()
    with pytest.raises(RateLimited):
        await g.acquire("a")
    held.release()
    waiting.cancel()


async def test_ticket_headers(gate, ft):
    t1 = await gate.acquire("j")
    h = t1.headers
    assert h["X-RateLimit-Limit"] == "2"
    assert h["X-RateLimit-Remaining"] == "1"
    assert h["X-RateLimit-Reset"] == "1.000"
    assert h["X-Queue-Time"] == "0.000"
    t1.release()
    t2 = asyncio.ensure_future(gate.acquire("j"))
    await ft.run_until(t2.done, step=0.001)
    h = t2.result().headers
    assert h["X-RateLimit-Remaining"] == "0"  # two starts in this second
    assert float(h["X-Queue-Time"]) == pytest.approx(0.5, abs=0.002)
    assert t2.result().queued_s == pytest.approx(0.5, abs=0.002)
    t2.result().release()
    for value in h.values():
        assert value == value.strip() and value.isascii()


async def test_refusal_headers_carry_rate_limit_and_retry_after(ft):
    g = make_gate(settings(rate_limit_queue_per_client=0), clock=ft.clock, sleep=ft.sleep)
    held = await g.acquire("k")
    with pytest.raises(RateLimited) as info:
        await g.acquire("k")
    h = info.value.headers()
    assert set(h) >= {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "X-Queue-Time"}
    assert h["X-RateLimit-Remaining"] == "0"
    assert isinstance(info.value, APIError) and info.value.body("seed")["error"].startswith("Rate limit exceeded: ")
    assert APIError("x", retry_after=2.5).headers() == {"Retry-After": "3"}
    held.release()


async def test_fractional_rate_window(ft):
    g = make_gate(settings(rate_limit_per_second=0.5, rate_limit_min_interval_ms=0), clock=ft.clock, sleep=ft.sleep)
    starts = []
    for _ in range(3):
        task = asyncio.ensure_future(g.acquire("l"))
        await ft.run_until(task.done, step=0.01)
        starts.append(ft.now)
        task.result().release()
    assert [b - a for a, b in itertools.pairwise(starts)] == [pytest.approx(2.0, abs=0.011)] * 2


async def test_sliding_second_limit_without_min_interval(ft):
    g = make_gate(settings(rate_limit_per_second=3, rate_limit_min_interval_ms=0), clock=ft.clock, sleep=ft.sleep)
    starts = []
    for _ in range(7):
        task = asyncio.ensure_future(g.acquire("m"))
        await ft.run_until(task.done, step=0.01)
        starts.append(ft.now)
        task.result().release()
    for i in range(len(starts) - 3):
        assert starts[i + 3] - starts[i] >= 1.0 - 1e-9  # never 4 in a sliding second
    assert starts[:3] == [1000.0] * 3  # a burst up to the limit is not delayed


async def test_stats_shape(gate, ft):
    s = gate.stats()
    assert s == {
        "enabled": True,
        "requests_per_second": 2.0,
        "min_interval_ms": 500,
        "max_queue_per_client": 8,
        "max_queue_total": 512,
        "clients_tracked": 0,
        "requests_queued": 0,
        "requests_running": 0,
    }
    t = await gate.acquire("n")
    w = asyncio.ensure_future(gate.acquire("n"))
    await ft.settle()
    s = gate.stats()
    assert (s["clients_tracked"], s["requests_queued"], s["requests_running"]) == (1, 1, 1)
    w.cancel()
    t.release()


async def test_open_gate_when_disabled():
    g = make_gate(settings(rate_limit_enabled=False, max_running=32))
    assert isinstance(g.inner, OpenGate)  # no per-client limits; the global bound stays
    await g.start()
    tickets = [await g.acquire("same") for _ in range(20)]  # never waits, never refuses
    assert g.stats()["enabled"] is False and g.stats()["requests_running"] == 20
    for t in tickets:
        t.release()
        t.release()
    assert g.stats()["requests_running"] == 0
    assert tickets[0].headers["X-Queue-Time"] == "0.000"
    await g.close()


async def test_real_clock_back_to_back_acquires_are_half_a_second_apart():
    g = make_gate(settings())
    await g.start()
    t0 = time.monotonic()
    (await g.acquire("127.0.0.1")).release()
    t1 = time.monotonic()
    second = await g.acquire("127.0.0.1")
    t2 = time.monotonic()
    second.release()
    assert t2 - t0 >= 0.5
    assert t2 - t1 < 2.0  # not needlessly slow (the fake-clock tests pin this exactly)
    assert second.queued_s > 0.3
    await g.close()


async def test_random_traffic_keeps_every_promise(ft):
    """Arrivals, holds and cancellations at random over 4 clients; check every rule after."""
    rng = random.Random(20240603)
    g = make_gate(settings(rate_limit_queue_per_client=3, rate_limit_queue_total=6), clock=ft.clock, sleep=ft.sleep)
    arrived: dict[int, tuple[str, float]] = {}
    started: dict[int, float] = {}
    ended: dict[int, float] = {}
    refused: set[int] = set()
    cancelled_waiting: set[int] = set()
    tasks: dict[int, asyncio.Task] = {}

    async def request(i: int, client: str, hold: float) -> None:
        try:
            ticket = await g.acquire(client)
        except (RateLimited, Overloaded):
            refused.add(i)
            return
        with ticket:
            started[i] = ft.now
            await ft.sleep(hold)
            ended[i] = ft.now

    for i in range(400):
        client = rng.choice("abcd")
        arrived[i] = (client, ft.now)
        tasks[i] = asyncio.ensure_future(request(i, client, rng.choice([0.0, 0.05, 0.3, 0.7, 2.0])))
        await ft.settle()
        if rng.random() < 0.15:
            waiting = [j for j, t in tasks.items() if not t.done() and j not in started]
            if waiting:
                j = rng.choice(waiting)
                tasks[j].cancel()
                cancelled_waiting.add(j)
        await ft.advance(rng.choice([0.0, 0.0, 0.01, 0.1, 0.4, 1.0]))
    await ft.run_until(lambda: all(t.done() for t in tasks.values()))

    assert refused and cancelled_waiting and len(started) > 100  # every path was exercised
    assert not (cancelled_waiting & set(started)), "a cancelled waiter got a slot"
    assert set(arrived) == set(started) | refused | cancelled_waiting, "an accepted request never ran"
    for client in "abcd":
        mine = sorted((j for j in started if arrived[j][0] == client), key=lambda j: started[j])
        assert mine == sorted(mine), "not FIFO"
        prev_end, starts = -1.0, []
        for j in mine:
            # Starts exactly when the rules allow: no overlap, no early start, no needless wait.
            due = max(arrived[j][1], prev_end)
            if starts:
                due = max(due, starts[-1] + 0.5)
            if len(starts) >= 2:
                due = max(due, starts[-2] + 1.0)
            assert started[j] == pytest.approx(due, abs=1e-6), (client, j)
            starts.append(started[j])
            prev_end = ended[j]
    s = g.stats()
    assert (s["requests_queued"], s["requests_running"]) == (0, 0)
    await ft.advance(2.0)
    assert g.stats()["clients_tracked"] == 0


async def test_try_acquire_starts_a_free_client_at_once_and_never_jumps_the_queue(gate, ft):
    first = gate.try_acquire("8.8.8.8")
    assert isinstance(first, Ticket) and gate.stats()["requests_running"] == 1
    assert gate.try_acquire("8.8.8.8") is None  # running: the second must wait its turn
    assert gate.stats()["requests_running"] == 1 and gate.stats()["requests_queued"] == 0
    waiting = asyncio.ensure_future(gate.acquire("8.8.8.8"))
    await ft.settle()
    first.release()
    await ft.advance(0.1)
    assert gate.try_acquire("8.8.8.8") is None  # the queued one goes first, and 0.5 s after the first start
    await ft.run_until(waiting.done, step=0.01)
    assert ft.now >= 1000.5
    waiting.result().release()
    assert isinstance(gate.try_acquire("9.9.9.9"), Ticket)  # another client is never held behind


async def test_the_global_bound_hands_slots_over_in_order_and_refuses_past_its_waiting_list():
    g = make_gate(settings(rate_limit_enabled=False, max_running=2, rate_limit_queue_total=2))
    a, b = await g.acquire("a"), await g.acquire("b")
    waiting = [asyncio.create_task(g.acquire(c)) for c in ("c", "d", "e")]
    await asyncio.sleep(0)
    assert g.stats()["generations_running"] == 2 and g.stats()["waiting_for_a_slot"] == 2
    with pytest.raises(APIError) as refused:
        await waiting[2]
    assert refused.value.status == 503 and refused.value.headers()["Retry-After"]
    waiting[0].cancel()  # a client that leaves while it waits gives up its place at once
    await asyncio.sleep(0)
    assert g.stats()["waiting_for_a_slot"] == 1
    a.release()
    d = await waiting[1]  # d moved up when c left, and takes a's slot
    assert d.client == "d" and float(d.headers["X-Queue-Time"]) >= 0
    assert g.stats()["generations_running"] == 2 and g.stats()["requests_running"] == 2
    b.release(), d.release(), d.release()
    assert g.stats()["generations_running"] == 0
