"""A raw upstream on 127.0.0.1 that writes exact bytes (a reason phrase, huge headers, a bomb), in its own thread.

    async def answer(n, method, reader, writer):   # n: the request's number, from 1
        writer.write(b"HTTP/1.1 500 Anything at all\\r\\ncontent-length: 0\\r\\n\\r\\n")
        return "close"                              # or None to keep the connection for the next request

    with RawUpstream(answer) as up: ... up.url, up.connections, up.requests (head + body bytes) ...

The tests/upstream.py server is uvicorn and cannot send what a hostile or odd server sends.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import zlib

CHAT_PATH = "/v1/chat/completions"


class RawUpstream:
    def __init__(self, answer, tls: ssl.SSLContext | None = None):
        self.answer, self.tls = answer, tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-upstream", daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{CHAT_PATH}"

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls), self._loop)
        self._server = future.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                method = head.split(b" ", 1)[0].decode()
                if await self.answer(len(self.requests), method, reader, writer) == "close":
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, asyncio.CancelledError):
            pass  # cancelled: the server stops (swallowed, or asyncio logs each cancelled connection as an error)
        finally:
            writer.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse_answer(*events: bytes, extra_headers: bytes = b"") -> bytes:
    """A whole chunked SSE answer: `data: <event>` for each."""
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n" + extra_headers + b"\r\n"
    return head + b"".join(chunk(b"data: %s\n\n" % e) for e in events) + b"0\r\n\r\n"


def delta(text: str) -> bytes:
    return b'{"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}' % text.encode()


async def endless(writer: asyncio.StreamWriter, piece: bytes, total: int) -> str:
    """Write `piece` again and again, up to `total` bytes or until the reader hangs up."""
    sent = 0
    while sent < total:
        writer.write(piece)
        await writer.drain()
        sent += len(piece)
    return "close"


def gzip_bomb(inflated: int = 2 << 30) -> bytes:
    """A gzip body that inflates to `inflated` zero bytes (2 GiB: ~2 MB), made without compressing it all.

    After a full flush the compressor forgets what came before, so each further MiB of zeros
    compresses to the same bytes: one block repeated. No trailer: a reader must stop long before.
    """
    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    head = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    return head + block * (inflated // len(zeros) - 1)
