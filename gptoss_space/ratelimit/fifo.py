"""Per-client FIFO gate: one request at a time, min interval, sliding-window rate, bounded queues.

* A client runs one request at a time; the others wait in FIFO order. A request starts no
  sooner than `rate_limit_min_interval_ms` after the client's previous start, and at most N
  start in any sliding W seconds: N = max(1, floor(rate_limit_per_second)), W = N / rate
  (2/s: 2 in any 1 s; 0.5/s: 1 in any 2 s).
* Past `rate_limit_queue_per_client` waiting (the running one not counted) a request gets
  RateLimited (429) at once; past `rate_limit_queue_total` waiting in all, Overloaded (503).
  A request that can start at once never counts against either bound.
* A request cancelled while waiting leaves the queue at once; the next one moves up.
* An idle client is forgotten once its constraints no longer matter (max(min interval, W)
  after it went idle) or after `rate_limit_idle_evict_s`, whichever is first.

Headers, on `Ticket.headers` and on this gate's refusals (`exc.headers()`; both in gate.py); seconds are
plain decimals with 3 places ("0.500"), not OpenAI's "500ms" form:

* `X-RateLimit-Limit`: N, the starts allowed per window of W s ("2": per second by default).
* `X-RateLimit-Remaining`: starts left in the current window after this one ("0" refused).
* `X-RateLimit-Reset`: seconds until Remaining is back to Limit; on a refusal, the precise
  Retry-After estimate (Retry-After itself is whole seconds, rounded up).
* `X-Queue-Time`: seconds the request waited before it started ("0.512"; "0.000" refused).

Retry-After estimates when a retry would be accepted: 429, when the client's queue head will
start (the running request's expected rest, from a moving average of hold times, and the
pacing); 503, one hold time spread over the requests running now.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from gptoss_space.errors import APIError
from gptoss_space.ratelimit.gate import ClientRateLimited, Gate, GateOverloaded, GlobalBound, OpenGate, Ticket, secs
from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable]


class _Client:
    __slots__ = ("queue", "running", "started_at", "starts")

    def __init__(self) -> None:
        self.queue: deque[_Waiter] | None = None  # made when first needed: most clients never wait
        self.running = False
        self.started_at = 0.0  # start of the running request
        self.starts: list[float] = []  # the last N start times, oldest first


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self) -> None:
        self.wake: asyncio.Future | None = None


class FifoGate:
    """The in-process gate. Single event loop; every method runs on it."""

    def __init__(self, settings: Settings, clock: Clock | None = None, sleep: Sleep | None = None) -> None:
        self.rate = float(settings.rate_limit_per_second)
        self.window_count = max(1, math.floor(self.rate))
        self.window_s = self.window_count / self.rate
        self.min_interval_s = settings.rate_limit_min_interval_ms / 1000.0
        self.max_queue = settings.rate_limit_queue_per_client
        self.max_total = settings.rate_limit_queue_total
        # Past this after its last start an idle client's state is the same as a new one's.
        self.horizon_s = min(max(self.min_interval_s, self.window_s), settings.rate_limit_idle_evict_s)
        self._clock = clock or time.monotonic
        self._sleep = sleep or asyncio.sleep
        self._clients: dict[str, _Client] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()  # client -> when it went idle, oldest first
        self._queued = 0
        self._running = 0
        self._avg_hold_s: float | None = None  # moving average of how long a slot is held

    def try_acquire(self, client: str) -> Ticket | None:
        now = self._clock()
        self._sweep(now)
        st = self._clients.get(client)
        if st is None:
            st = self._clients[client] = _Client()
        else:
            self._idle.pop(client, None)
        if not st.running and not st.queue and self._earliest(st) <= now:
            return self._start(client, st, now, 0.0)
        return None

    async def acquire(self, client: str) -> Ticket:
        ticket = self.try_acquire(client)
        if ticket is not None:
            return ticket
        now = self._clock()
        st = self._clients[client]  # made by try_acquire; nothing ran in between
        if len(st.queue or ()) >= self.max_queue:
            raise self._refuse(client, st, now, overloaded=False)
        if self._queued >= self.max_total:
            raise self._refuse(client, st, now, overloaded=True)
        return await self._wait(client, st, now)

    def stats(self) -> dict:
        self._sweep(self._clock())
        return {
            "enabled": True,
            "requests_per_second": self.rate,
            "min_interval_ms": round(self.min_interval_s * 1000),
            "max_queue_per_client": self.max_queue,
            "max_queue_total": self.max_total,
            "clients_tracked": len(self._clients),
            "requests_queued": self._queued,
            "requests_running": self._running,
        }

    async def start(self) -> None:
        """Nothing to start: eviction runs lazily on acquire, release and stats."""

    async def close(self) -> None:
        """Nothing to stop; waiters are cancelled with their requests."""

    async def _wait(self, client: str, st: _Client, t0: float) -> Ticket:
        loop = asyncio.get_running_loop()
        me = _Waiter()
        if st.queue is None:
            st.queue = deque()
        st.queue.append(me)
        self._queued += 1
        try:
            while True:
                if st.queue[0] is me and not st.running:
                    now = self._clock()
                    delay = self._earliest(st) - now
                    if delay <= 0:
                        break
                    # The head paces itself; nothing else can make it eligible sooner.
                    await self._sleep(delay)
                else:
                    me.wake = loop.create_future()
                    await me.wake
                    me.wake = None
        except BaseException:  # CancelledError above all: give up the place at once
            was_head = st.queue[0] is me
            st.queue.remove(me)
            self._queued -= 1
            if was_head:
                self._wake_head(st)
            self._maybe_idle(client, st, self._clock())
            raise
        st.queue.popleft()
        self._queued -= 1
        return self._start(client, st, now, now - t0)

    def _wake_head(self, st: _Client) -> None:
        if st.queue and not st.running:
            fut = st.queue[0].wake
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _start(self, client: str, st: _Client, now: float, queued_s: float) -> Ticket:
        st.running = True
        st.started_at = now
        st.starts.append(now)
        if len(st.starts) > self.window_count:
            del st.starts[0]
        self._running += 1
        in_window = sum(1 for t in st.starts if t > now - self.window_s)
        headers = {
            "X-RateLimit-Limit": str(self.window_count),
            "X-RateLimit-Remaining": str(max(0, self.window_count - in_window)),
            "X-RateLimit-Reset": secs(self.window_s),  # this start is the window's newest
            "X-Queue-Time": secs(queued_s),
        }
        return Ticket(client=client, queued_s=queued_s, headers=headers, on_release=lambda: self._release(client, st),
                      on_start=lambda: self._restamp(st))

    def _restamp(self, st: _Client) -> None:
        """The request started later than its ticket (a global slot): pace the client's next start from now."""
        now = self._clock()
        st.started_at = now
        if st.starts:
            st.starts[-1] = now

    def _release(self, client: str, st: _Client) -> None:
        now = self._clock()
        st.running = False
        self._running -= 1
        held = max(0.0, now - st.started_at)
        self._avg_hold_s = held if self._avg_hold_s is None else 0.8 * self._avg_hold_s + 0.2 * held
        self._wake_head(st)
        self._maybe_idle(client, st, now)
        self._sweep(now)

    def _earliest(self, st: _Client) -> float:
        """When the client's next request may start, as far as pacing goes."""
        if not st.starts:
            return -math.inf
        at = st.starts[-1] + self.min_interval_s
        if len(st.starts) == self.window_count:
            at = max(at, st.starts[0] + self.window_s)
        return at

    def _head_start_eta(self, st: _Client, now: float) -> float:
        """Seconds until the client's queue head would start (an estimate while one runs)."""
        free_at = now
        if st.running:
            expected = self._avg_hold_s if self._avg_hold_s is not None else 1.0
            free_at = now + max(0.0, st.started_at + expected - now)
        return max(free_at, self._earliest(st)) - now

    def _refuse(self, client: str, st: _Client, now: float, *, overloaded: bool) -> APIError:
        if overloaded:
            # A waiting place frees when any queued request starts: roughly one slot hold
            # (or one pacing interval) spread over the clients running now.
            hold = max(self._avg_hold_s or 1.0, self.min_interval_s)
            retry = hold / max(1, self._running)
        else:
            retry = self._head_start_eta(st, now)
        retry = max(retry, 0.001)
        headers = {
            "X-RateLimit-Limit": str(self.window_count),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": secs(retry),
            "X-Queue-Time": secs(0.0),
        }
        if overloaded:
            log.warning("gate: %d requests waiting in all, refusing (503)", self._queued)
            exc: APIError = GateOverloaded(
                f"Server busy: {self._queued} requests are waiting; retry in {retry:.1f}s.", retry_after=retry
            )
        else:
            n = len(st.queue or ())
            log.info("gate: client queue full (%d waiting), refusing (429)", n)
            exc = ClientRateLimited(
                f"Rate limit exceeded: {n} requests of this client are already waiting (max {self.max_queue}; "
                f"{self.window_count} per {self.window_s:g}s, {self.min_interval_s * 1000:g} ms apart); "
                f"retry in {retry:.1f}s.",
                retry_after=retry,
            )
        exc.rate_headers = headers  # type: ignore[attr-defined]
        self._maybe_idle(client, st, now)
        return exc

    def _maybe_idle(self, client: str, st: _Client, now: float) -> None:
        if st.running or st.queue or self._clients.get(client) is not st:
            return
        if not st.starts or st.starts[-1] + self.horizon_s <= now:
            del self._clients[client]  # nothing left to remember
            self._idle.pop(client, None)
        else:
            self._idle[client] = now
            self._idle.move_to_end(client)

    def _sweep(self, now: float) -> None:
        # Idle times are appended in order, so the expired ones are at the front.
        idle = self._idle
        cutoff = now - self.horizon_s
        while idle:
            client = next(iter(idle))
            if idle[client] > cutoff:
                break
            del idle[client]
            self._clients.pop(client, None)


def make_gate(settings: Settings, clock: Clock | None = None, sleep: Sleep | None = None) -> Gate:
    """The gate the settings ask for: FifoGate, or OpenGate when rate limiting is off, under the global bound."""
    inner = FifoGate(settings, clock=clock, sleep=sleep) if settings.rate_limit_enabled else OpenGate()
    return GlobalBound(inner, settings.running_limit(), settings.rate_limit_queue_total)
