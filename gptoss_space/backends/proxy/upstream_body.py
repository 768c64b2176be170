"""Bounded reads of an upstream's answer: the body decoded by us with its output bounded, SSE lines and events bounded.

httpx decodes gzip/deflate/br in one unbounded call per received chunk (a 64 KiB gzip chunk can
inflate to 64 MiB) and httpx-sse gathers a line without limit, so a hostile upstream could make
the proxy hold gigabytes. Here the raw bytes (response.aiter_raw) are inflated in pieces of at
most PIECE bytes, and every bound is counted on the decoded bytes. The bounds are far above any
real answer; past one, the answer is abandoned with a 502 that names no internals.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx

from gptoss_space.errors import UpstreamError

# Status line and headers. Real answers carry about 1 KiB; httpcore's h11 refuses a head over
# 100 KiB while reading it (so memory stays bounded), this catches what lies in between.
MAX_HEAD_BYTES = 64 * 1024
# One SSE event, its lines together. A chunk of one token is ~250 bytes; a server that sends a
# whole long answer in one event stays well under 1 MiB.
MAX_EVENT_BYTES = 1024 * 1024
# A whole non-streamed completion, decoded: 2 MB is a long answer (500k characters).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
# A whole stream, decoded: 131,072 tokens (gpt-oss's context) at ~250 bytes a chunk is 32 MiB.
MAX_STREAM_BYTES = 128 * 1024 * 1024
# An error body: only its message (cut to a few hundred characters) is used.
ERROR_BODY_BYTES = 64 * 1024
PIECE = 64 * 1024  # the most one inflate step may produce
ACCEPT_ENCODING = "gzip, deflate"  # what we can inflate with a bound


class TooLarge(UpstreamError):
    """The upstream's answer passed one of our bounds."""

    def __init__(self, what: str):
        super().__init__(f"Upstream answer too large: {what}", status=502)


def check_head(response: httpx.Response) -> None:
    """Raise TooLarge for a status line and headers over MAX_HEAD_BYTES."""
    size = len(response.reason_phrase) + sum(len(k) + len(v) + 4 for k, v in response.headers.raw)
    if size > MAX_HEAD_BYTES:
        raise TooLarge("headers")


class _Inflater:
    """gzip or deflate (zlib-wrapped or raw, as servers send both), at most PIECE bytes at a time."""

    def __init__(self, coding: str):
        self.coding = coding
        self.z = zlib.decompressobj(zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS)
        self.started = False

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """The output of `data`, piece by piece: the next piece is made only once the caller took this one."""
        while not self.z.eof:  # bytes after the end of the compressed data are ignored, as httpx does
            try:
                piece = self.z.decompress(data, PIECE)
            except zlib.error:
                if self.coding != "deflate" or self.started:
                    raise UpstreamError("Upstream answer could not be decoded", status=502) from None
                self.z = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, without the zlib wrapper
                self.started = True
                continue
            self.started = True
            data = self.z.unconsumed_tail
            if piece:
                yield piece
            if not data and len(piece) < PIECE:
                return  # all input used and no more output waiting


async def decoded(response: httpx.Response, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body's bytes, inflated by us; TooLarge(what) once more than `limit` decoded bytes came."""
    codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    coding = {"x-gzip": "gzip"}.get(codings[0], codings[0]) if codings else ""
    if len(codings) > 1 or coding not in ("", "gzip", "deflate"):
        raise UpstreamError("Upstream answer in an unsupported content encoding", status=502)
    inflater = _Inflater(coding) if coding else None
    total = 0
    async for raw in response.aiter_raw():
        for piece in (raw,) if inflater is None else inflater.inflate(raw):
            total += len(piece)
            if total > limit:
                raise TooLarge(what)
            yield piece


async def read_bounded(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most `limit` decoded bytes of the body, and whether there was more (the rest is not read)."""
    buf = bytearray()
    try:
        async for piece in decoded(response, limit, "body"):
            buf += piece
    except TooLarge:
        return bytes(buf[:limit]), True
    return bytes(buf), False


@dataclass
class Event:
    """One server-sent event: its type ("message" unless named) and its data lines joined by newlines."""

    event: str
    data: str


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """The SSE events of a body (WHATWG rules: data/event fields, comments, CR, LF or CRLF line ends)."""
    name, data, size = "", [], 0
    async for line in _lines(response):
        if not line:
            if data:
                yield Event(name or "message", "\n".join(data))
            name, data, size = "", [], 0
            continue
        size += len(line)
        if size > MAX_EVENT_BYTES:
            raise TooLarge("one event")
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if data:  # a last event without its blank line
        yield Event(name or "message", "\n".join(data))


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """Decoded lines, each at most MAX_EVENT_BYTES (checked before it is complete)."""
    buf = b""
    cr = False  # the previous piece ended with CR: an LF that starts this one belongs to it
    async for piece in decoded(response, MAX_STREAM_BYTES, "the stream"):
        if cr and piece.startswith(b"\n"):
            piece = piece[1:]
        cr = piece.endswith(b"\r")
        buf += piece
        lines = buf.splitlines()
        buf = b"" if buf.endswith((b"\n", b"\r")) else lines.pop() if lines else b""
        if len(buf) > MAX_EVENT_BYTES:
            raise TooLarge("one event")
        for line in lines:
            yield line.decode("utf-8", "replace")
    if buf:
        yield buf.decode("utf-8", "replace")
