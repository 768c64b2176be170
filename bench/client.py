"""An SSE client that times streams: first token, last token, token count; many at once from distinct client IPs."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

# Each request comes from its own loopback address, so per-IP rate limits never hold the benchmark back.
_ips = (f"127.0.{a}.{b}" for a, b in itertools.cycle([(a, b) for a in range(1, 250) for b in range(2, 250)]))


def next_ip() -> str:
    return next(_ips)


@dataclass
class StreamResult:
    start: float
    first: float | None = None  # first non-empty content
    last: float | None = None  # last non-empty content
    end: float | None = None  # the stream closed
    chunks: int = 0  # content chunks
    tokens: int | None = None  # completion_tokens from usage, when the server sends it
    error: str | None = None
    text: list[str] = field(default_factory=list)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start

    @property
    def count(self) -> int:
        return self.tokens if self.tokens is not None else self.chunks

    @property
    def decode_tps(self) -> float | None:
        """Tokens after the first over the time from the first to the last."""
        if self.first is None or self.last is None or self.last <= self.first or self.count < 2:
            return None
        return (self.count - 1) / (self.last - self.first)


def new_client(ip: str | None = None, timeout: float = 600.0) -> httpx.AsyncClient:
    """A client bound to its own loopback address. Made before the clock starts: making one costs ~20-40 ms (TLS setup)."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=ip or next_ip()), timeout=timeout)


async def stream_chat(url: str, body: dict, *, client: httpx.AsyncClient | None = None) -> StreamResult:
    """POSTs one streaming chat request and times its content chunks."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    async with client or new_client() as client:
        res = StreamResult(start=time.perf_counter())
        try:
            async with client.stream("POST", url, json=body) as r:
                if r.status_code != 200:
                    res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                    return res
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    _take(res, json.loads(data))
        except httpx.HTTPError as e:
            res.error = f"{type(e).__name__}: {e}"
        res.end = time.perf_counter()
        return res


def _take(res: StreamResult, obj: dict) -> None:
    now = time.perf_counter()
    if "error" in obj:
        res.error = str(obj["error"])[:200]
        return
    if obj.get("usage"):
        res.tokens = obj["usage"].get("completion_tokens", res.tokens)
    for choice in obj.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            res.chunks += 1
            res.text.append(content)
            res.last = now
            if res.first is None:
                res.first = now


@dataclass
class Concurrent:
    streams: list[StreamResult]
    wall: float  # first request sent to last stream closed

    @property
    def ok(self) -> list[StreamResult]:
        return [s for s in self.streams if not s.error]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error]

    @property
    def tokens(self) -> int:
        return sum(s.count for s in self.ok)

    @property
    def aggregate_tps(self) -> float:
        """All tokens of all streams over the whole wall time, prefill included."""
        return self.tokens / self.wall if self.wall > 0 else 0.0

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft for s in self.ok if s.ttft is not None]

    @property
    def max_ttft(self) -> float | None:
        return max(self.ttfts) if self.ttfts else None

    @property
    def median_ttft(self) -> float | None:
        return statistics.median(self.ttfts) if self.ttfts else None

    @property
    def median_decode(self) -> float | None:
        rates = [s.decode_tps for s in self.ok if s.decode_tps]
        return statistics.median(rates) if rates else None


async def run_concurrent(url: str, bodies: list[dict]) -> Concurrent:
    """All requests at once, each from its own client IP."""
    clients = [new_client() for _ in bodies]
    t0 = time.perf_counter()
    streams = await asyncio.gather(*(stream_chat(url, b, client=c) for b, c in zip(bodies, clients)))
    return Concurrent(list(streams), time.perf_counter() - t0)


async def time_to_first_byte(url: str, body: dict) -> float:
    """Seconds from sending a streaming request to the first byte of its body."""
    async with new_client(timeout=60.0) as client:
        t0 = time.perf_counter()
        async with client.stream("POST", url, json={**body, "stream": True}) as r:
            chunks = r.aiter_raw()
            try:
                await anext(chunks)
            except StopAsyncIteration:
                raise RuntimeError(f"empty answer, HTTP {r.status_code}") from None
            first = time.perf_counter() - t0
            async for _ in chunks:
                pass
        return first


async def wait_ready(url: str, timeout: float, proc=None) -> float:
    """Polls GET url until it answers 200; returns the seconds it took. Raises if the process dies first."""
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.perf_counter() - t0 < timeout:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if (await client.get(url)).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout:.0f} s")
