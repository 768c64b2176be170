"""Simulated clients on loopback against a soak server, and the checks of what the server did with them.

Each client has its own address: most connect from their own 127.0.x.y (some adding a spoofed
X-Forwarded-For, which must be ignored); the rest come through the one trusted proxy address
127.0.0.2 with an X-Forwarded-For naming them (IPv4 and IPv6, sometimes behind a spoofed entry).
They send bursts of requests of every kind below, streaming and not, valid and not, leaving early
or not, with faults injected through the prompt's [soak ...] directive.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

PROXY = "127.0.0.2"
CHAT_PATHS = ["/api", "/api/gpt-oss-2t", "/v1/chat/completions"]
# kind: weight. What each must get is in `expected`.
KINDS = {
    "stream": 28, "json": 20, "stream_leave": 10, "json_leave": 5, "fault_mid": 4, "fault_start": 2,
    "hang": 2, "invalid": 9, "malformed": 6, "oversize": 3, "slow_body": 2, "health": 3,
    # Attacks (issue 14): a 4,301-digit integer, a 100 KB X-Forwarded-For head.
    "huge_int": 2, "xff_huge": 2,
}
HUGE_XFF = ", ".join(f"10.{i % 250}.{i % 200}.1" for i in range(9000))  # ~100 KB
# Settings of the soak server: the default rate limits, short timeouts for the injected faults.
SERVER_SETTINGS = {
    "rate_limit_enabled": True,
    "rate_limit_per_second": 2.0,
    "rate_limit_min_interval_ms": 500,
    "rate_limit_queue_per_client": 3,
    "rate_limit_queue_total": 5000,
    "trusted_proxies": [PROXY + "/32"],
    "request_timeout_s": 4.0,
    "body_read_timeout_s": 2.0,
    "max_body_bytes": 20_000,
}


@dataclass
class Outcome:
    id: str
    kind: str
    client: str  # the identity the server should see
    status: int | None = None
    complete: bool = False  # the whole answer arrived ([DONE] / a JSON completion)
    left: bool = False  # the client went away before the answer ended
    error_event: str | None = None
    error: str | None = None  # an HTTP error body's message, or a transport error
    started: float = 0.0
    ended: float = 0.0
    retried: str | None = None  # the transport error of a first attempt that was retried


@dataclass
class SimClient:
    key: str  # identity the gate should use
    local_address: str
    xff: str | None = None  # X-Forwarded-For to send, if any
    outcomes: list[Outcome] = field(default_factory=list)


def make_clients(n: int, rng: random.Random) -> list[SimClient]:
    clients = []
    for i in range(n):
        if i % 4 == 3:  # through the trusted proxy
            # IPv6 clients are counted per /64 (client_ipv6_prefix): each simulated one has a /64 of its own.
            addr = f"198.51.100.{i // 4 % 250 + 1}" if i % 8 == 3 else f"2001:db8:{i:x}::1"
            key = addr if ":" not in addr else str(ipaddress.ip_network(f"{addr}/64", strict=False))
            xff = addr if rng.random() < 0.5 else f"6.6.6.{i % 250}, {addr}"  # the left entry is the client's lie
            clients.append(SimClient(key, PROXY, xff))
        else:
            addr = f"127.0.{1 + i // 250}.{1 + i % 250}"
            spoof = f"10.9.{i % 250}.1, 1.2.3.4" if rng.random() < 0.3 else None
            clients.append(SimClient(addr, addr, spoof))
    return clients


def body_for(kind: str, rid: str, rng: random.Random, settings: dict) -> dict | bytes:
    def ask(directive: str, **extra) -> dict:
        return {"messages": [{"role": "user", "content": f"[soak id={rid} {directive}]"}], **extra}

    delay = rng.choice([0, 0.002, 0.01])
    if kind == "stream":
        return ask(f"pieces={rng.randint(1, 8)} delay={delay}", stream=True)
    if kind == "json":
        return ask(f"pieces={rng.randint(1, 8)} delay={delay}", stream=False)
    if kind == "stream_leave":
        return ask("pieces=60 delay=0.02", stream=True)
    if kind == "json_leave":
        return ask("pieces=60 delay=0.02", stream=False)
    if kind == "fault_mid":
        return ask("pieces=5 fault=mid", stream=True)
    if kind == "fault_start":
        return ask("pieces=5 fault=start", stream=rng.random() < 0.5)
    if kind == "hang":
        return ask(f"pieces=3 hang={settings['request_timeout_s'] + 2:g}", stream=True)
    if kind == "invalid":
        return rng.choice([
            {"messages": []}, {"messages": "hi"}, ask("", temperature=7), ask("", top_p=0), ask("", max_tokens=0),
            ask("", n=3), ask("", stream="yes"), {"messages": [{"role": "wizard", "content": "x"}]}, [1, 2],
            ask("", seed=2**80), ask("", tools=[{"type": "function"}]), ask("", max_tokens=10**9),
            {"messages": [{"role": "user"}]},  # no content: OpenAI answers 400
        ])
    if kind == "malformed":
        return rng.choice([b"", b"{", b'{"messages": [', b'{"messages": "\xff\xfe"}', b"[" * 5000, b"\x00\x01",
                           b'{"messages": [{"role": "user", "content": "\\ud800"}]}', b"null", b"nan"])
    if kind == "oversize":
        return ask("x" * 25_000)
    if kind == "huge_int":
        field = rng.choice(["seed", "max_tokens", "temperature"])
        return json.dumps(ask("pieces=2"))[:-1].encode() + f', "{field}": {"9" * 4301}}}'.encode()
    if kind == "xff_huge":
        return ask("pieces=2")
    return b""  # slow_body and health build their own requests


async def one_request(http: httpx.AsyncClient, sim: SimClient, kind: str, rid: str, rng: random.Random,
                      base: str, settings: dict) -> Outcome:
    """One request; retried once, as the OpenAI SDK does, when a kept-alive connection was closed under it."""
    out = await _attempt(http, sim, kind, rid, rng, base, settings)
    if out.status is None and out.error and _closed_under_us(out.error):
        first = out.error
        out = await _attempt(http, sim, kind, rid, rng, base, settings)
        out.retried = first
    return out


def _closed_under_us(error: str) -> bool:
    # The server closed an idle kept-alive connection (uvicorn's timeout_keep_alive) as the request went out.
    return "ReadError('')" in error or "Server disconnected without sending a response" in error


async def _attempt(http: httpx.AsyncClient, sim: SimClient, kind: str, rid: str, rng: random.Random,
                   base: str, settings: dict) -> Outcome:
    out = Outcome(rid, kind, sim.key, started=time.monotonic())
    headers = {"x-forwarded-for": sim.xff} if sim.xff else {}
    if kind == "xff_huge":
        headers = {"x-forwarded-for": HUGE_XFF}
    path = rng.choice(CHAT_PATHS)
    try:
        if kind == "health":
            r = await http.get(base + "/api", headers=headers)
            out.status, out.complete = r.status_code, r.status_code == 200
        elif kind == "slow_body":
            await _slow_body(sim, base, out, headers, settings["body_read_timeout_s"])
        else:
            body = body_for(kind, rid, rng, settings)
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            leave_json = kind == "json_leave"
            timeout = rng.uniform(0.05, 0.4) if leave_json else 30
            async with http.stream("POST", base + path, content=content, headers=headers, timeout=timeout) as r:
                out.status = r.status_code
                if r.status_code != 200:
                    raw = await r.aread()
                    try:
                        data = json.loads(raw)
                        out.error = data["error"] if isinstance(data["error"], str) else data["error"]["message"]
                    except ValueError:  # h11's own 400 for a head it could not take is plain text
                        out.error = f"not JSON: {raw[:80]!r}"
                elif r.headers["content-type"].startswith("text/event-stream"):
                    leave_after = rng.randint(1, 4) if kind == "stream_leave" else None
                    seen = 0
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        seen += 1
                        if line == "data: [DONE]":
                            out.complete = True
                        elif line.startswith('data: {"error"'):
                            err = json.loads(line[6:])["error"]
                            out.error_event = err if isinstance(err, str) else err["message"]
                        if leave_after is not None and seen >= leave_after and not out.complete:
                            out.left = True
                            break
                else:
                    out.complete = "choices" in json.loads(await r.aread())
    except httpx.TimeoutException:
        out.left = True  # json_leave: the client gave up waiting
    except httpx.HTTPError as e:
        out.error = f"transport: {e!r}"
    out.ended = time.monotonic()
    return out


async def _slow_body(sim: SimClient, base: str, out: Outcome, headers: dict, limit_s: float) -> None:
    """A body trickled in over 1.6x body_read_timeout_s: the server must answer 408."""
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"messages": [{"role": "user", "content": "slow"}], "stream": False}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"POST /api HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=(sim.local_address, 0))
    received = bytearray()

    async def read_all() -> None:  # concurrently: a failed write later must not lose the answer
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except (ConnectionError, OSError):
            pass

    reading = asyncio.create_task(read_all())
    try:
        writer.write(head.encode())
        for i in range(8):
            await asyncio.sleep(limit_s / 5)
            if reading.done():
                break
            try:
                writer.write(body[i : i + 1])
                await writer.drain()
            except (ConnectionError, OSError):
                break
        await asyncio.wait_for(reading, 5)
    finally:
        reading.cancel()
        writer.close()
    data = bytes(received)
    status_line = data.split(b"\r\n", 1)[0].split()
    out.status = int(status_line[1]) if len(status_line) > 1 else None
    if b"\r\n\r\n" in data:
        out.error = json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]


def expected(o: Outcome, settings: dict) -> str | None:
    """None when the outcome is what this kind of request must get; else what went wrong."""
    if o.kind == "xff_huge":  # a head past max_header_bytes: refused (431; h11's 400), or the connection closed on it
        ok = o.status in (400, 431) or (o.error or "").startswith("transport")
        return None if ok else f"xff_huge: status {o.status}, error {o.error!r}"
    if o.error and o.error.startswith("transport"):
        return f"{o.kind}: {o.error}"
    if o.status == 429:  # the client's queue was full: allowed for anything that reached the gate
        return None if o.kind not in ("invalid", "malformed", "oversize", "slow_body", "health", "huge_int") else "429 before the gate"
    if o.status is not None and o.status >= 500 and o.kind != "fault_start":
        return f"unexpected {o.status}: {o.error}"
    want = {
        "stream": o.status == 200 and o.complete and not o.error_event,
        "json": o.status == 200 and o.complete,
        "stream_leave": o.status == 200 and (o.left or o.complete),
        "json_leave": (o.status == 200 and o.complete) or (o.left and o.status in (None, 200)),
        "fault_mid": o.status == 200 and o.error_event == "Generation failed (injected)",
        "fault_start": o.status == 500 and o.error == "Generation failed (injected)",
        "hang": o.status == 200 and o.error_event is not None and f"longer than the {settings['request_timeout_s']:g} s limit" in o.error_event,
        "invalid": o.status == 400 and bool(o.error),
        "malformed": o.status == 400 and bool(o.error),
        "huge_int": o.status == 400 and "digits" in (o.error or ""),
        "oversize": o.status == 413 and "too large" in (o.error or ""),
        "slow_body": o.status == 408 and "not received within" in (o.error or ""),
        "health": o.status == 200,
    }[o.kind]
    return None if want else f"{o.kind}: status {o.status}, complete {o.complete}, left {o.left}, " \
                             f"event {o.error_event!r}, error {o.error!r}"


async def drive(base: str, clients: list[SimClient], per_client: int, rng: random.Random, settings: dict,
                max_in_flight: int = 64) -> list[Outcome]:
    """Every client sends `per_client` requests in bursts of 1-5 (bursts past the queue of 3 get 429s)."""
    kinds, weights = list(KINDS), list(KINDS.values())
    limit = asyncio.Semaphore(max_in_flight)
    counter = iter(range(10**9))

    async def run_client(sim: SimClient, seed: int) -> None:
        crng = random.Random(seed)
        transport = httpx.AsyncHTTPTransport(local_address=sim.local_address, retries=0)
        async with httpx.AsyncClient(transport=transport, timeout=30) as http:
            left = per_client
            while left:
                burst = min(left, crng.choices([1, 2, 3, 5], [50, 25, 15, 10])[0])
                left -= burst

                async def fire() -> None:
                    async with limit:
                        kind = crng.choices(kinds, weights)[0]
                        sim.outcomes.append(await one_request(http, sim, kind, f"r{next(counter)}", crng, base, settings))

                await asyncio.gather(*(fire() for _ in range(burst)))
                await asyncio.sleep(crng.uniform(0, 0.3))

    await asyncio.gather(*(run_client(c, rng.randrange(2**32)) for c in clients))
    return [o for c in clients for o in c.outcomes]


def check_gate(slots: list, settings: dict, keys: set[str]) -> list[str]:
    """The per-client promises, from the gate's own start/release times."""
    problems = []
    rate = settings["rate_limit_per_second"]
    n = max(1, int(rate))
    window, spacing = n / rate, settings["rate_limit_min_interval_ms"] / 1000
    by_key: dict[str, list] = {}
    for key, start, release in slots:
        by_key.setdefault(key, []).append((start, release))
        if release is None:
            problems.append(f"slot of {key} never released")
    for key, runs in by_key.items():
        if key not in keys:
            problems.append(f"gate keyed a request on {key!r}, which is no client's address (spoofed?)")
        runs.sort()
        for (s0, r0), (s1, _) in zip(runs, runs[1:]):
            if r0 is not None and s1 < r0 - 1e-6:
                problems.append(f"{key}: two requests ran at once")
            if s1 - s0 < spacing - 1e-6:
                around = [(round(a - s0, 4), None if b is None else round(b - s0, 4)) for a, b in runs if abs(a - s0) < 3]
                problems.append(f"{key}: starts {1000 * (s1 - s0):.1f} ms apart (min {1000 * spacing:.0f}); "
                                f"(start, release) around, relative: {around}")
        starts = [s for s, _ in runs]
        for i in range(len(starts) - n):
            if starts[i + n] - starts[i] < window - 1e-6:
                problems.append(f"{key}: {n + 1} starts within {window:g} s")
    return problems


def check_backend(outcomes: list[Outcome], final: dict) -> list[str]:
    """Nothing lost: each generation finished, failed by injection, or was cancelled because its client left."""
    problems = []
    b = final["backend"]
    if b["running"]:
        problems.append(f"{b['running']} generations still running")
    if b["started"] != b["finished"] + b["cancelled"] + b["failed"]:
        problems.append(f"backend counts do not add up: {b}")
    started = Counter(final["started_ids"])
    twice = [i for i, n in started.items() if n > 1]
    if twice:
        problems.append(f"generations started twice: {twice[:5]}")
    cancelled = set(final["cancelled_ids"])
    by_id = {o.id: o for o in outcomes}
    for rid in started:
        o = by_id.get(rid)
        if o is None:
            problems.append(f"{rid} ran but nobody asked for it")
        elif o.status not in (200, 500, None):
            problems.append(f"{rid} ran although it was answered {o.status}")
        elif rid in cancelled and not (o.left or o.kind == "hang"):
            problems.append(f"{rid} was cancelled but its client stayed ({o.kind})")
        elif o.complete and rid in cancelled:
            problems.append(f"{rid} answered completely yet counted cancelled")
    for o in outcomes:
        if o.complete and o.kind in ("stream", "json") and o.id not in started:
            problems.append(f"{o.id} answered without running")
    u = final["usage"]
    if u["requests"] != u["completed"] + u["cancelled"] + u["failed"]:
        problems.append(f"usage does not add up: {u}")
    g = final["gate"]
    if g["requests_running"] or g["requests_queued"]:
        problems.append(f"gate still holds requests: {g}")
    return problems
