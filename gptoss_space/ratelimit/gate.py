"""What a gate hands out and refuses with: Ticket, the Gate protocol, its refusals, and OpenGate (no limits).

The per-client gate itself, with its pacing and queues, is ratelimit.FifoGate.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gptoss_space.errors import Overloaded, RateLimited

log = logging.getLogger(__name__)


def secs(x: float) -> str:
    return f"{max(0.0, x):.3f}"


@dataclass
class Ticket:
    """A slot held by one request. release() is idempotent; headers go on the response."""

    client: str
    queued_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False
    on_release: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    # Called when the request really starts, if that is later than the ticket (it waited for a global slot).
    on_start: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if self.on_release is not None:
            self.on_release()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Gate(Protocol):
    """Acquire a slot for a client, release it. A store shared between replicas fits here."""

    async def acquire(self, client: str) -> Ticket: ...

    def try_acquire(self, client: str) -> Ticket | None:
        """A slot at once when the client may start now, without waiting or refusing; None otherwise."""

    def stats(self) -> dict: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _RateHeaders:
    rate_headers: dict[str, str] = {}

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, **super().headers()}  # type: ignore[misc]


class ClientRateLimited(_RateHeaders, RateLimited):
    """RateLimited (429) that also carries the X-RateLimit-* headers of the refusal."""


class GateOverloaded(_RateHeaders, Overloaded):
    """Overloaded (503) that also carries the X-RateLimit-* headers of the refusal."""


class OpenGate:
    """No limits: every request starts at once. Used when rate limiting is switched off."""

    def __init__(self) -> None:
        self.running = 0

    async def acquire(self, client: str) -> Ticket:
        return self.try_acquire(client)

    def try_acquire(self, client: str) -> Ticket:
        self.running += 1
        return Ticket(client=client, headers={"X-Queue-Time": secs(0.0)}, on_release=self._done)

    def _done(self) -> None:
        self.running -= 1

    def stats(self) -> dict:
        return {"enabled": False, "clients_tracked": 0, "requests_queued": 0, "requests_running": self.running}

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class GlobalBound:
    """Any gate, plus a bound on generations running at once, all clients together.

    Past the per-client gate a request takes one of `limit` slots; when none is free it waits in
    one FIFO, and past `max_waiting` waiters it is refused with 503 at once. So what reaches the
    backend is bounded (the engine's rows and its short waiting list), whatever the number of
    client identities, and a request cancelled while it waits gives up its place (and its
    client's turn) at once.
    """

    def __init__(self, inner, limit: int, max_waiting: int) -> None:
        self.inner, self.limit, self.max_waiting = inner, limit, max_waiting
        self.running = 0
        self._waiters: deque[asyncio.Future] = deque()

    def try_acquire(self, client: str) -> Ticket | None:
        if self.running >= self.limit or self._waiters:
            return None
        ticket = self.inner.try_acquire(client)
        return self._hold(ticket) if ticket is not None else None

    async def acquire(self, client: str) -> Ticket:
        ticket = self.try_acquire(client)
        if ticket is not None:
            return ticket
        ticket = await self.inner.acquire(client)
        if self.running < self.limit and not self._waiters:
            return self._hold(ticket)
        if len(self._waiters) >= self.max_waiting:
            ticket.release()
            log.warning("gate: %d generations running and %d waiting for a slot, refusing (503)", self.running, len(self._waiters))
            raise GateOverloaded(
                f"Server busy: {self.running} generations are running and {len(self._waiters)} are waiting; retry shortly.",
                retry_after=1.0,
            )
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        me = loop.create_future()
        self._waiters.append(me)
        try:
            await me  # resolved by _free with the slot already counted as ours
        except BaseException:
            if me in self._waiters:
                self._waiters.remove(me)
            elif me.done() and not me.cancelled():
                self._free()  # the slot was handed over as we were cancelled: pass it on
            ticket.release()
            raise
        waited = loop.time() - t0
        if ticket.on_start is not None:
            ticket.on_start()  # the client's pacing counts from here, when it really starts
        ticket.queued_s += waited
        ticket.headers["X-Queue-Time"] = secs(ticket.queued_s)
        return self._hold(ticket, counted=True)

    def _hold(self, ticket: Ticket, counted: bool = False) -> Ticket:
        if not counted:
            self.running += 1
        inner_release = ticket.on_release

        def release() -> None:
            if inner_release is not None:
                inner_release()
            self._free()

        ticket.on_release = release
        return ticket

    def _free(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight to the next waiter
                return
        self.running -= 1

    def stats(self) -> dict:
        return {**self.inner.stats(), "generations_running": self.running, "generations_max": self.limit,
                "waiting_for_a_slot": len(self._waiters)}

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()
