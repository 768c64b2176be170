"""How uvicorn serves the app: h11 with a deadline on each request head, bounded headers and connections.

h11 and not httptools: httptools answered an HTTP/1.0 client's stream with chunked encoding (which
HTTP/1.0 does not know) and read headers of any size (a 10 MB X-Forwarded-For came through);
h11 ends such a stream by closing the connection and refuses a head over `max_header_bytes`.
uvicorn's keep-alive timer stops at a connection's first byte, so a client trickling its headers
held a connection and its buffers for ever; HeadDeadlineH11 closes it `header_timeout_s` after
its first byte (or after connecting) unless the whole head has arrived. A body that stalls is
the job of entry.EntryGuard (body_read_timeout_s).
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head takes longer than `header_timeout_s`."""

    header_timeout_s = 10.0
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # no whole request head yet
            self._arm_head_deadline()
        else:
            self._disarm_head_deadline()

    def connection_lost(self, exc) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE:  # still no whole head: between requests, the server owes nothing
            self.timeout_keep_alive_handler()  # closes the connection


def uvicorn_options(settings) -> dict:
    """The keyword arguments for uvicorn.Config / uvicorn.run that bound slow and greedy clients."""
    protocol = type("HeadDeadlineH11", (HeadDeadlineH11,), {"header_timeout_s": settings.header_timeout_s})
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "limit_concurrency": settings.max_connections,
        # X-Forwarded-For is read only by gptoss_space.ratelimit.client_ip, through trusted proxies.
        "proxy_headers": False,
    }
