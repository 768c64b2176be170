"""The proxy's HTTP/1.1 transport for httpx: asyncio protocols and httptools' C parser.

httpx's default transport (httpcore over h11, through anyio) took 1.8 ms from sending a request
to the first SSE event of a loopback upstream, where the same exchange on a bare socket took
0.35 ms: pure-Python parsing and several layers of context managers per read. This transport
keeps httpx's client (requests, responses, timeouts, exceptions), so the proxy's code is the same,
and does the wire work itself:

- a pool of keep-alive connections per scheme, host and port (`max_connections` open at most,
  `max_keepalive` idle kept), https through the event loop's TLS;
- the request's head and body written at once; the response parsed by httptools as it arrives,
  its body handed over chunk by chunk (reading pauses while 256 KiB wait unread);
- httpx's timeouts (connect, read, write, pool) and exceptions (ConnectError, ReadTimeout,
  RemoteProtocolError, ...), as the proxy expects them;
- a connection goes back to the pool only once its response was read to the end with keep-alive;
  a request on a reused connection that the upstream had closed meanwhile (it sent nothing) is
  sent once more on a new connection.

Proxies from the environment (HTTP_PROXY and the like) still go through httpx's own transports.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import AsyncIterator

import httptools
import httpx

_READ_HIGH = 256 * 1024  # unread body bytes at which the socket stops being read
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Stale(Exception):
    """A reused keep-alive connection was closed by the upstream before it answered anything."""


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request at a time, the response parsed as it arrives."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self._writable = True
        self._wake: asyncio.Future | None = None
        self._begin()

    def _begin(self) -> None:
        """Fresh state for the next response."""
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.until_close = False  # a body that ends when the connection does
        self.received = False  # any byte of this response
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("Upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"Malformed answer from the upstream: {exc}"))
        self._notify()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and self.until_close and exc is None:
            self.complete = True
        elif not self.complete and self.error is None:
            if not self.received and self.reused:
                self.error = _Stale()
            elif not self.received:
                self.error = httpx.RemoteProtocolError("Server disconnected without sending a response.")
            else:
                self.error = (httpx.ReadError if exc else httpx.RemoteProtocolError)(
                    "Upstream closed the connection before the answer ended"
                )
        self._notify()

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._notify()

    # -- httptools callbacks ------------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            self.reason, self.headers = b"", []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        names = {k.lower(): v for k, v in self.headers}
        chunked = b"chunked" in names.get(b"transfer-encoding", b"").lower()
        self.until_close = not chunked and b"content-length" not in names and status not in (204, 304)
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _READ_HIGH and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True

    # -- used by the transport ----------------------------------------------------------------
    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _wait(self, timeout: float | None, timed_out) -> None:
        """Until the next event on the connection (data, its end, room to write); timed_out(timeout) is raised past it."""
        self._wake = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._wake
        except TimeoutError:
            raise timed_out(timeout) from None
        finally:
            self._wake = None

    async def send(self, data: bytes, timeout: float | None) -> None:
        if self.closed or self.transport is None:
            raise _Stale() if self.reused else httpx.WriteError("Connection closed")
        self.transport.write(data)
        while not self._writable and not self.closed:
            await self._wait(timeout, lambda t: httpx.WriteTimeout(f"Upstream did not take the request within {t:g} s"))

    async def read_head(self, timeout: float | None) -> None:
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait(timeout, _NO_HEAD)

    async def body(self, timeout: float | None) -> AsyncIterator[bytes]:
        while True:
            while self.chunks:
                chunk = self.chunks.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered < _READ_HIGH // 2 and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                yield chunk
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            await self._wait(timeout, _NO_BODY)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self.chunks

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class _Body(httpx.AsyncByteStream):
    """A response body; closing it gives the connection back to the pool or closes it."""

    def __init__(self, pool: "UpstreamTransport", key: tuple, conn: _Connection, timeout: float | None):
        self._pool, self._key, self._conn, self._timeout = pool, key, conn, timeout
        self._released = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._conn.body(self._timeout):
            yield chunk

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._key, self._conn)


class UpstreamTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, ssl_context: ssl.SSLContext | None = None, max_connections: int = 256, max_keepalive: int = 32):
        self._ssl = ssl_context
        self._max_keepalive = max_keepalive
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple, list[_Connection]] = {}
        self._open: set[_Connection] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.")
        timeouts = request.extensions.get("timeout", {})
        key = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        data = await _encode(request)
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("No free connection to the upstream") from None
        try:
            conn = await self._exchange(key, data, timeouts)
        except BaseException:
            self._slots.release()
            raise
        if request.method == "HEAD":
            conn.complete = True
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, key, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    async def _exchange(self, key: tuple, data: bytes, timeouts: dict) -> _Connection:
        """Sends the request and reads the response head, on a pooled connection if one is free."""
        while True:  # only a reused connection can be stale: it ends once the idle ones are used up
            conn = self._checkout(key) or await self._connect(key, timeouts.get("connect"))
            try:
                await conn.send(data, timeouts.get("write"))
                await conn.read_head(timeouts.get("read"))
                return conn
            except _Stale:
                self._discard(conn)  # the upstream closed it while idle: once more, on another
            except BaseException:
                self._discard(conn)
                raise

    def _checkout(self, key: tuple) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn._begin()
                conn.reused = True
                return conn
            self._open.discard(conn)
        return None

    async def _connect(self, key: tuple, timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            tls = self._ssl or httpx.create_ssl_context()
            self._ssl = tls
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"Connecting took longer than {timeout:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc)) from None
        self._open.add(conn)
        return conn

    def _release(self, key: tuple, conn: _Connection) -> None:
        self._slots.release()
        idle = self._idle.setdefault(key, [])
        if conn.reusable and len(idle) < self._max_keepalive:
            idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()


def _silent(what: str):
    return lambda t: httpx.ReadTimeout(f"No data from the upstream for {t:g} s while reading {what}")


_NO_HEAD, _NO_BODY = _silent("the status line"), _silent("the body")


async def _encode(request: httpx.Request) -> bytes:
    """The request's head and body as bytes for one write (httpx set Host and Content-Length)."""
    parts = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), request.url.raw_path)]
    chunked = False
    for name, value in request.headers.raw:
        parts.append(b"%s: %s\r\n" % (name, value))
        if name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    parts.append(b"\r\n")
    async for piece in request.stream:
        if chunked:
            if piece:
                parts.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        else:
            parts.append(piece)
    if chunked:
        parts.append(b"0\r\n\r\n")
    return b"".join(parts)
