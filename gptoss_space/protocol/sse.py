"""Server-sent events: one encoder and the [DONE] terminator."""

from __future__ import annotations

import json

DONE = b"data: [DONE]\n\n"

# Keep reverse proxies (nginx, the Spaces front) from buffering or transforming the stream. No Connection
# header: it is the server's to set (an HTTP/1.0 client got "keep-alive" and the server's "close" together).
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def to_sse(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"
