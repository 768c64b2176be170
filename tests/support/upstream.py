"""A scripted OpenAI-compatible upstream: a real uvicorn server on 127.0.0.1 in a background thread.

Usage:

    with Upstream(Reply.fail(503), Reply(content=["Hel", "lo"])) as up:
        ... point the proxy at up.url ...
        assert up.attempts == 2
        assert up.requests[0].headers["authorization"] == "Bearer sk-..."

or, as a pytest fixture (import `upstream` into the test module or a conftest):

    async def test_x(upstream):
        upstream.enqueue(Reply(content=["a", "b"], chunk_delay_s=0.05))

Each POST takes the next queued Reply (the `default` Reply once the queue is empty) and is recorded
in `requests` with its headers, JSON body, timestamps (time.monotonic) of every event sent, and
whether the client went away before the answer was complete. A GET on any path answers a small
health JSON (`probe_status`) and is recorded in `probes`, so health probes never count as attempts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
import uvicorn

CHAT_PATH = "/v1/chat/completions"


class _Cut(Exception):
    """Raised inside the app to make uvicorn drop the connection mid-body."""


class _QuietCut(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Cut))


logging.getLogger("uvicorn.error").addFilter(_QuietCut())


@dataclass
class Reply:
    """One scripted answer. The defaults stream "Hello world" in two chunks and end with [DONE]."""

    status: int = 200
    content: list[str] = field(default_factory=lambda: ["Hello", " world"])
    reasoning: list[str] = field(default_factory=list)  # sent before the content chunks
    reasoning_key: str = "reasoning_content"  # or "reasoning"
    finish_reason: str | None = "stop"
    usage: dict | None = None  # sent as a last chunk with empty choices, as OpenAI's include_usage does
    done: bool = True  # send `data: [DONE]`
    delay_s: float = 0.0  # wait before the status line (a slow upstream)
    chunk_delay_s: float = 0.0  # wait before each reasoning/content chunk
    cut_after: int | None = None  # drop the connection after this many reasoning/content chunks
    stall_after: int | None = None  # go silent (connection open) after this many reasoning/content chunks
    as_json: bool = False  # answer one plain JSON completion instead of SSE
    error: str | None = None  # the message of an error answer (status >= 400)
    error_shape: Literal["openai", "seed", "text"] = "openai"
    retry_after: str | None = None  # Retry-After header value
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None  # a raw body: overrides everything above but status/headers/delay
    content_type: str | None = None  # overrides the content type chosen

    @classmethod
    def fail(
        cls,
        status: int,
        message: str = "scripted failure",
        *,
        retry_after: float | str | None = None,
        shape: Literal["openai", "seed", "text"] = "openai",
    ) -> Reply:
        ra = None if retry_after is None else str(retry_after)
        return cls(status=status, error=message, error_shape=shape, retry_after=ra)

    @classmethod
    def completion(cls, content: str = "Hello world", **kw: Any) -> Reply:
        """A plain JSON chat.completion (what an upstream sends when it ignores stream: true)."""
        return cls(content=[content], as_json=True, **kw)


@dataclass
class Recorded:
    """One request the upstream saw."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    started: float  # time.monotonic() when the request arrived
    reply: Reply | None = None
    sent: list[tuple[float, str]] = field(default_factory=list)  # (time, SSE data) per event sent
    finished: float | None = None  # the answer was sent completely
    disconnected: bool = False  # the client went away before the answer was complete
    cut: bool = False  # the server dropped the connection on purpose (Reply.cut_after)
    disconnected_at: float | None = None
    client: tuple | None = None  # (host, port) of the connection it came on

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def closed_port_url(path: str = CHAT_PATH) -> str:
    """A loopback URL where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


class Upstream:
    """A scripted upstream HTTP server on 127.0.0.1 (free port), run by uvicorn in a thread."""

    def __init__(self, *replies: Reply, default: Reply | None = None, probe_status: int = 200):
        self.queue: deque[Reply] = deque(replies)
        self.default = default or Reply()
        self.probe_status = probe_status
        self.requests: list[Recorded] = []
        self.probes: list[Recorded] = []
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    # -- scripting and inspection -------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> Upstream:
        self.queue.extend(replies)
        return self

    @property
    def url(self) -> str:
        return f"{self.base_url}{CHAT_PATH}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def attempts(self) -> int:
        return len(self.requests)

    def gaps(self) -> list[float]:
        """Seconds between the starts of consecutive requests."""
        t = [r.started for r in self.requests]
        return [b - a for a, b in zip(t, t[1:])]

    async def until(self, predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
        """Poll predicate without blocking the caller's event loop; False if it timed out."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Upstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app, interface="asgi3", http="h11", loop="asyncio", lifespan="off",
            log_config=None, access_log=False, proxy_headers=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(sock),), name=f"upstream-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("scripted upstream did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    async def _main(self, sock: socket.socket) -> None:
        # uvicorn's own shutdown polls every 0.1 s and waits 0.1 s more; tests stop many servers, so
        # stop at once: cancel serve(), close the listener and every connection, cancel the handlers.
        assert self._server is not None
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        serve = asyncio.create_task(self._server.serve(sockets=[sock]))
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({serve, stopping}, return_when=asyncio.FIRST_COMPLETED)
        serve.cancel()
        stopping.cancel()
        await asyncio.gather(serve, stopping, return_exceptions=True)
        for listener in getattr(self._server, "servers", []):
            listener.close()
        for conn in list(self._server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.close()
        tasks = list(self._server.server_state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sock.close()

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the ASGI app -------------------------------------------------------------------------
    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")
        rec = Recorded(
            method=scope["method"],
            path=scope["path"],
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            json=payload,
            started=time.monotonic(),
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        if rec.method != "POST":
            self.probes.append(rec)
            await _send_whole(send, self.probe_status, b'{"status":"ok"}', "application/json", {})
            rec.finished = time.monotonic()
            return
        self.requests.append(rec)
        rec.reply = reply = self.queue.popleft() if self.queue else self.default

        gone = asyncio.Event()

        async def watch() -> None:
            # After the body, receive() returns only when the client disconnects or we finished.
            await receive()
            if rec.finished is None and not rec.cut:
                rec.disconnected, rec.disconnected_at = True, time.monotonic()
                gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await _serve(reply, rec, send, gone)
        finally:
            watcher.cancel()


async def _pause(seconds: float, gone: asyncio.Event) -> bool:
    """Sleep; True if the client went away meanwhile."""
    if seconds <= 0:
        return gone.is_set()
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except TimeoutError:
        pass
    return gone.is_set()


async def _send_whole(send: Callable, status: int, body: bytes, ctype: str, headers: dict) -> None:
    hdrs = [(b"content-type", ctype.encode())] + [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _chunk(delta: dict, finish_reason: str | None = None) -> dict:
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


async def _serve(reply: Reply, rec: Recorded, send: Callable, gone: asyncio.Event) -> None:
    if await _pause(reply.delay_s, gone):
        return
    headers = dict(reply.headers)
    if reply.retry_after is not None:
        headers["retry-after"] = reply.retry_after
    if reply.body is not None:
        await _send_whole(send, reply.status, reply.body, reply.content_type or "application/octet-stream", headers)
        rec.finished = time.monotonic()
        return
    if reply.status >= 400:
        message = reply.error or "error"
        if reply.error_shape == "text":
            body, ctype = message.encode(), "text/plain; charset=utf-8"
        else:
            err: Any = message if reply.error_shape == "seed" else {"message": message, "type": "error", "code": None}
            body, ctype = json.dumps({"error": err}).encode(), "application/json"
        await _send_whole(send, reply.status, body, reply.content_type or ctype, headers)
        rec.finished = time.monotonic()
        return
    if reply.as_json:
        message = {"role": "assistant", "content": "".join(reply.content)}
        if reply.reasoning:
            message[reply.reasoning_key] = "".join(reply.reasoning)
        completion = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason}],
        }
        if reply.usage is not None:
            completion["usage"] = reply.usage
        await _send_whole(send, reply.status, json.dumps(completion).encode(), reply.content_type or "application/json", headers)
        rec.finished = time.monotonic()
        return

    hdrs = {"content-type": reply.content_type or "text/event-stream", "cache-control": "no-store", **headers}
    await send({"type": "http.response.start", "status": reply.status, "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()]})

    async def emit(data: str) -> None:
        if gone.is_set():
            return
        await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
        rec.sent.append((time.monotonic(), data))

    await emit(json.dumps(_chunk({"role": "assistant", "content": ""})))
    texts = [(reply.reasoning_key, t) for t in reply.reasoning] + [("content", t) for t in reply.content]
    for i, (key, text) in enumerate(texts):
        if reply.cut_after is not None and i >= reply.cut_after:
            rec.cut = True
            raise _Cut()
        if reply.stall_after is not None and i >= reply.stall_after:
            await _pause(3600, gone)
            return
        if await _pause(reply.chunk_delay_s, gone):
            return
        await emit(json.dumps(_chunk({key: text})))
    if reply.cut_after is not None and reply.cut_after >= len(texts):
        rec.cut = True
        raise _Cut()
    if reply.finish_reason is not None:
        await emit(json.dumps(_chunk({}, reply.finish_reason)))
    if reply.usage is not None:
        await emit(json.dumps({**_chunk({}), "choices": [], "usage": reply.usage}))
    if reply.done:
        await emit("[DONE]")
    rec.finished = time.monotonic()
    await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
def upstream():
    """A started Upstream for one test (default reply: a two-chunk "Hello world" stream)."""
    with Upstream() as up:
        yield up
