"""The soak: thousands of requests from hundreds of loopback clients against a server process, then the checks.

`python -m soak.run` (what `make soak` runs): 2,000 requests from 200 client addresses, the fuzz
suite at 10x its in-suite examples, and SIGTERM on the real model. Bounded in count and time;
loopback only. Prints the figures and writes them to artifacts/soak.json; exits 1 on any problem.
`tests/system/test_soak.py` runs run_load() small inside the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from soak.load import SERVER_SETTINGS, check_backend, check_gate, drive, expected, make_clients
from soak.process import ROOT, ServerProcess

FAULT_KINDS = {"fault_mid": "backend error mid-stream", "fault_start": "backend error before the first token",
               "hang": "stalled generation past request_timeout_s", "slow_body": "body trickled past body_read_timeout_s"}


def _threads(stats: dict) -> list[str]:
    return [t for t in stats["threads"] if not t.startswith("asyncio_")]


class _RssSampler(threading.Thread):
    """The server's RSS once a second while the load runs."""

    def __init__(self, proc: ServerProcess):
        super().__init__(daemon=True)
        self.proc, self.samples, self._done = proc, [], threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.wait(1.0):
            try:
                self.samples.append(self.proc.stats()["rss"])
            except httpx.HTTPError:
                pass

    def stop(self) -> None:
        self._done.set()
        self.join(5)


def _delta(after: dict, before: dict) -> dict:
    """Counters of the soak itself, the warm-up taken out."""
    return {k: v - before.get(k, 0) if k != "max_running" else v for k, v in after.items()}


def _settle(proc: ServerProcess, tasks_at_rest: int, timeout: float = 10.0) -> dict:
    """Wait until nothing runs or waits and the task count is back to where it rested."""
    deadline = time.monotonic() + timeout
    while True:
        s = proc.stats()
        idle = not s["backend"]["running"] and not s["gate"]["requests_running"] and not s["gate"]["requests_queued"]
        if (idle and s["tasks"] <= tasks_at_rest) or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


def run_load(requests: int = 2000, clients: int = 200, seed: int = 1, max_seconds: float = 300.0,
             settings: dict | None = None) -> dict:
    """Run the load against a fresh server process; returns the figures and a list of problems (empty: all held)."""
    settings = {**SERVER_SETTINGS, **(settings or {})}
    rng = random.Random(seed)
    sims = make_clients(clients, rng)
    per_client = max(1, requests // clients)
    with ServerProcess(settings) as proc:
        # Warm up (first imports, first allocations) from an address no simulated client uses.
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.250.250"), timeout=10) as warm:
            for i in range(20):
                warm.post(proc.url + "/api", json={"messages": [{"role": "user", "content": f"warm {i}"}], "stream": i % 2 == 0})
        rest = _settle(proc, tasks_at_rest=10**6)
        before = proc.stats(collect=True)
        sampler = _RssSampler(proc)
        t0 = time.monotonic()
        try:
            outcomes = asyncio.run(asyncio.wait_for(drive(proc.url, sims, per_client, rng, settings), max_seconds))
        finally:
            sampler.stop()
        elapsed = time.monotonic() - t0
        _settle(proc, before["tasks"])
        after = proc.stats(collect=True, slots=True)
        time.sleep(1.2)  # past the gate's memory of idle clients (max(min interval, window) = 1 s)
        tracked_later = proc.stats()["gate"]["clients_tracked"]
        sent = proc.terminate()
        rc = proc.wait(15)
        exit_s = time.monotonic() - sent
        threads_at_exit = proc.threads_left()
    warm_slots = 20
    problems = [p for o in outcomes if (p := expected(o, settings))]
    problems += check_gate(after["slots"][warm_slots:], settings, {c.key for c in sims})
    problems += check_backend(outcomes, after)
    if after["tasks"] > before["tasks"]:
        problems.append(f"asyncio tasks {before['tasks']} before, {after['tasks']} after")
    if _threads(after) != _threads(before):
        problems.append(f"threads {_threads(before)} before, {_threads(after)} after")
    rss_growth = after["rss"] - before["rss"]
    if rss_growth > 25 * 2**20:
        problems.append(f"RSS grew {rss_growth / 2**20:.1f} MiB")
    if tracked_later:
        problems.append(f"gate still remembers {tracked_later} idle clients")
    if rc not in (0, -15) or not threads_at_exit or threads_at_exit[0]:
        problems.append(f"SIGTERM exit: rc {rc}, threads left {threads_at_exit}")
    statuses = Counter(o.status for o in outcomes)
    kinds = Counter(o.kind for o in outcomes)
    faults = {name: kinds[k] for k, name in FAULT_KINDS.items()}
    faults["client left mid-answer or while queued"] = sum(o.left for o in outcomes)
    faults["malformed, invalid or oversized body"] = kinds["malformed"] + kinds["invalid"] + kinds["oversize"]
    faults["spoofed X-Forwarded-For entry"] = sum(len(c.outcomes) for c in sims if c.xff and "," in c.xff)
    return {
        "requests": len(outcomes),
        "clients": clients,
        "seconds": round(elapsed, 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "served_200": statuses[200],
        "completed": sum(o.complete for o in outcomes),
        "rate_limited_429": statuses[429],
        "keepalive_races_retried": sum(o.retried is not None for o in outcomes),
        "unexpected_5xx": sum(1 for o in outcomes if (o.status or 0) >= 500 and o.kind != "fault_start"),
        "faults_injected": faults,
        "backend": _delta(after["backend"], before["backend"]),
        "usage": _delta(after["usage"], before["usage"]),
        "rss_mib": {"at_start": round(rest["rss"] / 2**20, 1), "before": round(before["rss"] / 2**20, 1),
                    "peak": round(max(sampler.samples + [after["rss"]]) / 2**20, 1),
                    "after": round(after["rss"] / 2**20, 1)},
        # Every ~10 % of the run: a leak climbs all along, an allocator's high-water mark levels off.
        "rss_mib_during": [round(x / 2**20, 1) for x in sampler.samples[:: max(1, len(sampler.samples) // 10)]],
        "threads": {"before": _threads(before), "after": _threads(after)},
        "tasks": {"before": before["tasks"], "after": after["tasks"]},
        "gate_clients_after_idle": tracked_later,
        "sigterm_exit_s": round(exit_s, 2),
        "problems": problems,
    }


def run_pytest(args: list[str], env: dict) -> int:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    print("$", " ".join(f"{k}={v}" for k, v in env.items()), " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env={**os.environ, **env})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--fuzz-scale", type=float, default=10, help="FUZZ_SCALE for tests/system/test_fuzz.py (0: skip)")
    parser.add_argument("--no-model", action="store_true", help="skip the real-model SIGTERM check")
    parser.add_argument("--out", default=str(ROOT / "artifacts" / "soak.json"))
    args = parser.parse_args(argv)
    report: dict = {}
    ok = True

    t0 = time.monotonic()
    load = run_load(args.requests, args.clients, args.seed, args.max_seconds)
    report["load"] = load
    ok &= not load["problems"]
    print(json.dumps(load, indent=1), flush=True)

    if args.fuzz_scale:
        fuzz_out = Path(args.out).with_name("fuzz.json")
        fuzz_out.parent.mkdir(parents=True, exist_ok=True)
        rc = run_pytest(["tests/system/test_fuzz.py"], {"FUZZ_SCALE": str(args.fuzz_scale), "FUZZ_REPORT": str(fuzz_out)})
        tried = json.loads(fuzz_out.read_text()) if fuzz_out.exists() else {}
        report["fuzz"] = {"scale": args.fuzz_scale, "passed": rc == 0, "bodies_tried": tried, "total": sum(tried.values())}
        ok &= rc == 0
    if not args.no_model:
        rc = run_pytest(["tests/system/test_shutdown.py", "tests/http/test_disconnects.py", "-k", "real_model"], {"GPTOSS_SOAK": "1"})
        report["real_model_shutdown"] = {"passed": rc == 0}
        ok &= rc == 0
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["command"] = "make soak  # = python -m soak.run " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    summary = {k: v for k, v in report.items() if k != "load"}
    print(json.dumps(summary, indent=1))
    print(f"soak {'held' if ok else 'FAILED'}: {load['requests']} requests, {len(load['problems'])} problems; "
          f"figures in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
