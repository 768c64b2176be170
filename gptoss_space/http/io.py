"""HTTP plumbing for the routes: bounded body reads, disconnect races, shutdown, responses that release their slot."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Send

from gptoss_space.errors import APIError, Overloaded, PayloadTooLarge

log = logging.getLogger(__name__)

T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before we answered."""


class BodyTimeout(APIError):
    """The body did not arrive in time (a client trickling it in holds a connection and a task)."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"

    def headers(self) -> dict[str, str]:
        # The rest of the body may still come: the connection cannot carry another request.
        return {**super().headers(), "Connection": "close"}


class ShuttingDown(Overloaded):
    code = "shutting_down"


async def read_body(request: Request, limit: int, timeout: float | None = None) -> bytes:
    """Read at most `limit` bytes within `timeout` seconds; refuse larger or slower bodies without reading them whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body too large: {declared} bytes (limit {limit})")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body too large: over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"Request body not received within {timeout:g} s ({size} bytes arrived)") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


class Shutdown:
    """The server's shutdown as the routes see it.

    It begins on SIGTERM/SIGINT (handlers chained after uvicorn's own, so uvicorn still stops
    listening and waits for connections) or on begin(). From then on a request still waiting
    for its turn is refused (503); running ones get `grace_s` to finish, after which a
    non-streaming one is answered 503 and a stream ends with an error event: the server never
    cuts a response mid-body. Keep grace_s below uvicorn's timeout_graceful_shutdown.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.begun: asyncio.Future | None = None  # done once shutdown began
        self.over: asyncio.Future | None = None  # done once the grace period is over
        self.deadline: float | None = None  # loop time the grace period ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timeouts: set[asyncio.Timeout] = set()
        self._chained: dict[int, object] = {}

    def install(self) -> None:
        """Called in the lifespan, on the serving loop. Signals only where uvicorn set its handlers (main thread)."""
        self._loop = asyncio.get_running_loop()
        self.begun, self.over = self._loop.create_future(), self._loop.create_future()
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            if callable(previous):  # a server's handler: chain it; never replace a default disposition
                self._chained[sig] = previous
                signal.signal(sig, partial(self._on_signal, previous))

    def uninstall(self) -> None:
        for sig, previous in self._chained.items():
            signal.signal(sig, previous)
        self._chained.clear()

    def _on_signal(self, previous, sig, frame) -> None:
        self.begin()
        previous(sig, frame)

    def begin(self) -> None:
        """Start draining. Safe from any thread and from a signal handler."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._begin)

    def _begin(self) -> None:
        if self.begun is None or self.begun.done():
            return
        log.info("shutting down: new and queued requests refused, %g s for running ones", self.grace_s)
        self.deadline = self._loop.time() + self.grace_s
        self.begun.set_result(None)
        self._loop.call_at(self.deadline, lambda: self.over.done() or self.over.set_result(None))
        for t in self._timeouts:
            t.reschedule(self.deadline)

    async def bounded_next(self, body: AsyncIterator[T]) -> T:
        """anext(body), cut short (GraceOver) when the grace period ends while it waits."""
        try:
            async with asyncio.timeout_at(self.deadline) as t:
                self._timeouts.add(t)
                try:
                    return await anext(body)
                finally:
                    self._timeouts.discard(t)
        except TimeoutError:
            if t.expired():
                raise GraceOver() from None
            raise


class GraceOver(Exception):
    """The shutdown grace period ended while a response was still being produced."""


def shutting_down() -> ShuttingDown:
    return ShuttingDown("Server is shutting down; retry shortly", retry_after=1)


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T], stop: asyncio.Future | None = None) -> T:
    """Run `work`, cancelling it if the client leaves first (ClientGone) or `stop` completes first (ShuttingDown)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    waits = {task, watcher} if stop is None else {task, watcher, stop}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        left = watcher.done()
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    if left:
        raise ClientGone()
    raise shutting_down()


class ReleasingStreamingResponse(StreamingResponse):
    """Closes the body and awaits `on_close` (the generation's aclose: cancel, free the slot) however the stream ends.

    With a `shutdown`, a stream still running when its grace period ends is closed and
    `farewell` (an SSE error event, or a function that makes it then) is sent in place of the rest: the body
    always ends cleanly.
    """

    def __init__(self, *args, on_close=None, shutdown: Shutdown | None = None, farewell: bytes | Callable[[], bytes] = b"",
                 write_timeout: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_close = on_close
        self._write_timeout = write_timeout
        self._shutdown = shutdown if shutdown is not None and shutdown.begun is not None else None
        self._farewell = farewell

    async def stream_response(self, send: Send) -> None:
        if self._shutdown is None:
            return await super().stream_response(send)
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = aiter(self.body_iterator)
        while True:
            try:
                chunk = await self._shutdown.bounded_next(body)
            except StopAsyncIteration:
                break
            except GraceOver:
                log.info("stream still running at the end of the shutdown grace period: ended with an error event")
                if farewell := self._farewell() if callable(self._farewell) else self._farewell:
                    await send({"type": "http.response.body", "body": farewell, "more_body": True})
                break
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self._stream_until_disconnect(receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if self._on_close is not None:
                await self._on_close()

    async def _stream_until_disconnect(self, receive, send) -> None:
        """Starlette's streaming for ASGI 2.3 servers (the body until the client leaves), on two plain asyncio
        tasks: its anyio task group cost about 0.3 ms before the first byte on a small CPU.

        A client that stops reading holds its generation (a batch row) only until the socket's buffers
        are full and then `write_timeout` more: a send that waits longer ends the stream like a disconnect.
        """
        if self._write_timeout:
            send = _bounded_send(send, self._write_timeout)
        body = asyncio.ensure_future(self.stream_response(send))
        gone = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({body, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (body, gone):
                task.cancel()
            await asyncio.gather(body, gone, return_exceptions=True)
        if body.done() and not body.cancelled() and body.exception() is not None:
            if isinstance(body.exception(), StalledClient):
                log.info("client stopped reading its stream for %.0f s: stream closed, generation cancelled", self._write_timeout)
                return
            raise body.exception()


class StalledClient(Exception):
    """A send to the client waited past the write timeout: it stopped reading."""


def _bounded_send(send: Send, timeout: float) -> Send:
    async def bounded(message) -> None:
        try:
            await asyncio.wait_for(send(message), timeout)
        except TimeoutError:
            raise StalledClient() from None

    return bounded
