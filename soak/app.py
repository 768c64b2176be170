"""The real app over a backend that obeys directives in the prompt, plus a probe route for counters.

A user message containing `[soak id=7 pieces=5 delay=0.02 fault=mid hang=3]` makes the backend
answer 5 pieces 20 ms apart, raise after the first (fault=mid; fault=start raises before any),
or stall `hang` seconds before the second piece (to trip request_timeout_s). Without a directive
it echoes. `GET /_soak/stats` reports what the server process holds: threads, asyncio tasks,
RSS, the backend's counters, the gate's starts and releases per client, and the service usage.

Run as a process: `python -m soak.app --port 0 --settings '{"rate_limit_enabled": true}'`
prints `PORT <n>` once listening; SIGTERM shuts it down like `python app.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass

import uvicorn
from fastapi import APIRouter, FastAPI

from gptoss_space.backends.base import Backend, Delta, GenerationRequest
from gptoss_space.errors import GenerationFailed
from gptoss_space.http.app import create_app
from gptoss_space.http.serving import uvicorn_options
from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

DIRECTIVE = re.compile(r"\[soak ([^\]]*)\]")


@dataclass
class Plan:
    id: str = ""
    pieces: int = 3
    delay: float = 0.0
    fault: str = ""  # "", "start", "mid"
    hang: float = 0.0

    @classmethod
    def of(cls, req: GenerationRequest) -> Plan:
        text = req.messages[-1]["content"] if req.messages else ""
        m = DIRECTIVE.search(text)
        if not m:
            return cls(pieces=1)
        plan = cls()
        for pair in m.group(1).split():
            key, _, value = pair.partition("=")
            if key in ("pieces",):
                setattr(plan, key, int(value))
            elif key in ("delay", "hang"):
                setattr(plan, key, float(value))
            elif key in ("id", "fault"):
                setattr(plan, key, value)
        return plan


class SoakBackend(Backend):
    """A Backend whose answers the prompt dictates; counts every stream's fate."""

    kind = "soak"

    def __init__(self, model_id: str = "soak-model"):
        self.model_id = model_id
        self.ready = True
        self.native_date = False
        self.started = self.finished = self.cancelled = self.failed = 0
        self.running = self.max_running = 0
        self.pieces = 0  # pieces yielded in all
        self.started_ids: list[str] = []
        self.cancelled_ids: list[str] = []
        self.yielded: dict[str, int] = {}  # id -> pieces yielded (for ids given)
        self.ended_at: dict[str, float] = {}  # id -> time.monotonic() the stream ended

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def health(self) -> dict:
        return {"backend": "soak", "model_loaded": self.model_id}

    async def stream(self, req: GenerationRequest):
        plan = Plan.of(req)
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        if plan.id:
            self.started_ids.append(plan.id)
            self.yielded[plan.id] = 0
        outcome = "cancelled"
        try:
            if plan.fault == "start":
                raise GenerationFailed("Generation failed (injected)")
            for i in range(plan.pieces):
                if plan.hang and i == 1:
                    await asyncio.sleep(plan.hang)
                if plan.delay:
                    await asyncio.sleep(plan.delay)
                if plan.fault == "mid" and i == 1:
                    raise GenerationFailed("Generation failed (injected)")
                self.pieces += 1
                if plan.id:
                    self.yielded[plan.id] += 1
                yield Delta(content=f"p{i} " if plan.id or plan.pieces > 1 else f"echo: {req.messages[-1]['content']}")
            outcome = "finished"
            yield Delta(finish_reason="stop", prompt_tokens=5, completion_tokens=plan.pieces)
        except GenerationFailed:
            outcome = "failed"
            raise
        finally:
            self.running -= 1
            if outcome == "finished":
                self.finished += 1
            elif outcome == "failed":
                self.failed += 1
            else:
                self.cancelled += 1
                if plan.id:
                    self.cancelled_ids.append(plan.id)
            if plan.id:
                self.ended_at[plan.id] = time.monotonic()

    def counters(self) -> dict:
        return {
            "started": self.started,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "running": self.running,
            "max_running": self.max_running,
            "pieces": self.pieces,
        }


class GateRecorder:
    """Wraps the gate's acquire to record each start and release per client (time.monotonic, the gate's clock)."""

    def __init__(self, gate):
        self.gate = gate
        self.slots: list[list] = []  # [client, started, released or None]
        inner = gate.acquire

        async def acquire(client: str):
            ticket = await inner(client)
            # The gate's own start time (FifoGate keeps the last starts per client): a clock read here
            # could come milliseconds later on a loaded machine and blur the spacing checks.
            state = getattr(getattr(gate, "inner", gate), "_clients", {}).get(client)  # FifoGate under the global bound
            started = state.starts[-1] if state is not None and state.starts else time.monotonic()
            slot = [client, started, None]
            self.slots.append(slot)
            release = ticket.release

            def recorded_release() -> None:
                if slot[2] is None:
                    slot[2] = time.monotonic()
                release()

            ticket.release = recorded_release
            return ticket

        gate.acquire = acquire


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe_router(app: FastAPI, backend, recorder: GateRecorder | None) -> APIRouter:
    router = APIRouter()
    service = app.state.service

    @router.get("/_soak/stats", include_in_schema=False)
    async def stats(collect: bool = False, slots: bool = False) -> dict:
        if collect:
            gc.collect()
        me = asyncio.current_task()
        return {
            "threads": sorted(t.name for t in threading.enumerate()),
            "tasks": len([t for t in asyncio.all_tasks() if t is not me]),
            "rss": rss_bytes(),
            "backend": backend.counters() if hasattr(backend, "counters") else {},
            "gate": service.gate.stats(),
            "usage": service.stats(),
            "slots": recorder.slots if (recorder and slots) else [],
            "started_ids": getattr(backend, "started_ids", []) if slots else [],
            "cancelled_ids": getattr(backend, "cancelled_ids", []) if slots else [],
        }

    return router


def build(settings: Settings, backend=None) -> FastAPI:
    """create_app with the soak backend (or the one given), the gate recorder and the probe route."""
    backend = backend or SoakBackend()
    app = create_app(settings, backend=backend, with_ui=False)
    recorder = GateRecorder(app.state.service.gate)
    app.include_router(probe_router(app, backend, recorder))
    app.state.recorder = recorder
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--settings", default="{}", help="JSON object of Settings overrides")
    parser.add_argument("--backend", choices=["soak", "local"], default="soak")
    parser.add_argument("--graceful", type=float, default=None, help="uvicorn timeout_graceful_shutdown")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    settings = Settings(**json.loads(args.settings))
    backend = None if args.backend == "local" else SoakBackend()
    if backend is None:
        from gptoss_space.backends import make_backend

        backend = make_backend(settings)
    app = build(settings, backend)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets (else Nagle adds ~40 ms per answer).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    graceful = args.graceful if args.graceful is not None else settings.shutdown_grace_s + 5
    config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=graceful,
                            **uvicorn_options(settings))  # as app.py serves it: h11, bounded heads
    server = ReportingServer(config)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server.run(sockets=[sock])


# The default executor's threads (asyncio's, or uvloop's when uvicorn runs on it): joined by the
# runner's shutdown_default_executor() after _serve returns.
EXECUTOR_THREADS = ("asyncio_", "uvloop_")


class ReportingServer(uvicorn.Server):
    """uvicorn.Server that prints the threads still alive once its shutdown (lifespan included) is done.

    Printed before uvicorn re-raises the captured SIGTERM (the process then ends by that signal,
    as `python app.py` does). The event loop's executor threads are counted apart: asyncio.run
    joins them as it returns.
    """

    async def _serve(self, sockets=None):
        await super()._serve(sockets)
        others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        left = [n for n in others if not n.startswith(EXECUTOR_THREADS)]
        print(f"THREADS_LEFT {json.dumps(left)} EXECUTOR {len(others) - len(left)}", flush=True)


if __name__ == "__main__":
    main()
