"""A tiny scripted OpenAI-compatible upstream for the proxy figures: `python -m bench.upstream PORT CHUNKS INTERVAL_S`.

Plain asyncio streams, no framework, so its own time to first byte is small and steady: the
first chunk goes out as soon as the request is read, then the rest every INTERVAL_S; a request's
max_tokens sets how many chunks (CHUNKS when it sends none).
"""

from __future__ import annotations

import asyncio
import json
import sys

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench-upstream",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method = lines[0].split(" ")[0]
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return method, body


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: int, interval: float) -> None:
    try:
        while True:
            try:
                method, body = await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if method != "POST":  # health probes
                body = b'{"status":"ok"}'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                continue
            try:
                n = int(json.loads(body).get("max_tokens") or chunks)
            except (ValueError, AttributeError):
                n = chunks
            writer.write(_HEAD + _chunk(_event("Hello")))
            await writer.drain()
            for i in range(1, n):
                await asyncio.sleep(interval)
                writer.write(_chunk(_event(f" w{i}")))
                await writer.drain()
            writer.write(_chunk(_event(None, "stop")) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int, chunks: int, interval: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, chunks, interval), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
