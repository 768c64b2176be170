"""Per-client FIFO gate: min interval, rate, queue bounds, eviction. (Interface; issue 3 fills it.)"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Ticket:
    """A slot held by one request. release() is idempotent; headers go on the response."""

    client: str
    queued_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    released: bool = False

    def release(self) -> None:
        self.released = True


class OpenGate:
    """No limits: every request starts at once. Used when rate limiting is switched off."""

    def __init__(self) -> None:
        self.running = 0

    async def acquire(self, client: str) -> Ticket:
        t0 = time.monotonic()
        self.running += 1
        gate = self

        class _T(Ticket):
            def release(self) -> None:
                if not self.released:
                    self.released = True
                    gate.running -= 1

        return _T(client=client, queued_s=time.monotonic() - t0)

    def stats(self) -> dict:
        return {"enabled": False, "running": self.running}
