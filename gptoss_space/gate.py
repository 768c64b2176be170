"""What a gate hands out and refuses with: Ticket, the Gate protocol, its refusals, and OpenGate (no limits).

The per-client gate itself, with its pacing and queues, is ratelimit.FifoGate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .errors import Overloaded, RateLimited


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


def refusal_headers(exc: Exception) -> dict[str, str]:
    """Every header for an error response: Retry-After plus, for the gate's refusals, X-RateLimit-*."""
    headers = getattr(exc, "headers", None)
    return dict(headers()) if callable(headers) else {}


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
