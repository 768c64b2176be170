"""Our server and the transformers baselines measured in turns: each baseline right before the figure it is compared with.

A shared machine drifts by tens of percent over minutes; measuring `generate` on prompt i and
then our server on prompt i (and so on) puts both sides of every ratio in the same minute.
While a baseline runs, our server is stopped (SIGSTOP, then SIGCONT): an idle server still wakes
its event loop every millisecond (Gradio's queue polls), and on 2 cores that alone slowed
`generate` up to 3x in our runs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import subprocess
import sys
import tempfile

from bench import servers
from bench.client import run_concurrent, stream_chat


class BaselineWorker:
    """The bench.baselines process: models loaded once, one command at a time; `quiet` is stopped meanwhile."""

    def __init__(self, model_dir: str, eos: list[int], warm: list[int]):
        self.quiet: subprocess.Popen | None = None
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"model_path": model_dir, "eos": eos, "warm": warm}, f)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.baselines", f.name],
            cwd=servers.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    async def ask(self, **cmd):
        def call():
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the baseline worker exited ({self.proc.poll()})")
            return json.loads(line)

        if self.quiet is not None:
            self.quiet.send_signal(signal.SIGSTOP)
        try:
            out = await asyncio.to_thread(call)
        finally:
            if self.quiet is not None:
                self.quiet.send_signal(signal.SIGCONT)
        if "error" in out:
            raise RuntimeError(f"baseline {cmd['op']} failed: {out['error']}")
        return out["ok"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def body(prompt, tokens: int, model: str | None = None, peer: bool = False) -> dict:
    """Ours gets the user message and adds its system prompt; a peer gets the composed messages: the same prompt."""
    b = {"messages": prompt.messages if peer else [{"role": "user", "content": prompt.user}], "max_tokens": tokens, "temperature": 0}
    if model:
        b["model"] = model
    return b


def burst(sets: dict, size: int) -> list:
    """The prompts of `size` concurrent clients: 4 and 8 have disjoint ones, so no level finds another's in a prefix cache."""
    return sets["conc4"] if size == 4 else sets["conc"][:size]


def level(runs: list) -> dict:
    errors = [e for r in runs for e in r.errors]
    if errors:
        raise RuntimeError(f"{len(errors)} failed streams: {errors[0]}")
    med = statistics.median
    return {
        "agg": med([r.aggregate_tps for r in runs]),
        "ttft_med": med([r.median_ttft for r in runs]),
        "ttft_max": med([r.max_ttft for r in runs]),
        "decode_med": med([r.median_decode for r in runs if r.median_decode] or [0.0]) or None,
        "tokens": [s.count for r in runs for s in r.streams],
    }


async def measure(a, url: str, sets: dict, base: BaselineWorker, progress=print) -> tuple[dict, dict]:
    """(baselines, ours), every pair measured back to back."""
    n = a.tokens
    b: dict = {"bf16": [], "fp32": [], "static": [], "prefill_short": [], "prefill_long": [], "batch": {}}
    singles, longs = [], []
    await stream_chat(url, {**body(sets["warm"][0], n), "max_tokens": 8})  # our warm-up
    for i, p in enumerate(sets["singles"]):
        progress(f"  one stream {i + 1}/{len(sets['singles'])}: generate bf16, ours" + (", static cache, fp32" if not a.quick and i == 0 else ""))
        b["bf16"].append(await base.ask(op="generate", dtype="bfloat16", ids=p.ids, n=n))
        singles.append(await run_concurrent(url, [body(p, n)]))
        b["prefill_short"].append(await base.ask(op="prefill", ids=p.ids, reps=3))
        if not a.quick and i == 0:  # the figures reported beside: once
            b["static"].append(await base.ask(op="generate", dtype="bfloat16", ids=p.ids, n=n, static=True))
            b["fp32"].append(await base.ask(op="generate", dtype="float32", ids=p.ids, n=n))
    await base.ask(op="unload", dtype="float32")
    for i, p in enumerate(sets["long"]):
        progress(f"  long prompt {i + 1}/{len(sets['long'])}: raw prefill, ours")
        b["prefill_long"].append(await base.ask(op="prefill", ids=p.ids, reps=2))
        longs.append(await stream_chat(url, {**body(p, n), "max_tokens": 4}))
    levels = {1: level(singles)}
    med = statistics.median
    for size in (4, 8):
        progress(f"  {size} at once: {len(sets['bursts'][size])} x (generate on a padded batch, ours with {size} clients" + (", one client)" if size == 8 else ")"))
        # One burst a repetition (a single burst is one sample of a noisy machine), each beside its
        # own baselines: generate on the same prompts right before it and, for 8, one client alone
        # right after it (after, so that a burst in a new minute pays for its new system prompt).
        batches, runs, alone = [], [], []
        for k, prompts in enumerate(sets["bursts"][size]):
            batches.append(await base.ask(op="batch", prompts=[p.ids for p in prompts], n=n))
            runs.append(await run_concurrent(url, [body(p, n) for p in prompts]))
            if size == 8:
                alone.append(await run_concurrent(url, [body(sets["alone"][k], 8)]))
        levels[size] = level(runs)
        levels[size]["agg_ratio"] = med(r.aggregate_tps / bb["aggregate_tps"] for r, bb in zip(runs, batches))
        if alone:
            level(alone)  # raises on a failed stream
            levels[size]["alone_ttft"] = med(r.max_ttft for r in alone)
            levels[size]["ttft_ratio"] = med(r.max_ttft / one.max_ttft for r, one in zip(runs, alone))
            levels[size]["ttft_pairs"] = [(r.max_ttft, one.max_ttft) for r, one in zip(runs, alone)]
        levels[size]["agg_pairs"] = [(r.aggregate_tps, bb["aggregate_tps"]) for r, bb in zip(runs, batches)]
        b["batch"][size] = {"aggregate_tps": med(bb["aggregate_tps"] for bb in batches), "runs": batches}
    for r in longs:
        if r.error:
            raise RuntimeError(f"long prompt failed: {r.error}")
    baselines = {
        "threads": (await base.ask(op="info"))["threads"],
        "bf16": _median_runs(b["bf16"]),
        "prefill_short": med(b["prefill_short"]),
        "prefill_long": med(b["prefill_long"]),
        "batch": b["batch"],
    }
    if b["fp32"]:
        baselines["fp32"] = _median_runs(b["fp32"])
    if b["static"]:
        baselines["bf16_static"] = _median_runs(b["static"])
    ours = {
        "decode": levels[1]["decode_med"],
        "ttft_short": levels[1]["ttft_med"],
        "ttft_long": med([r.ttft for r in longs]),
        # Each prompt's TTFT beside the raw prefill of the same prompt, measured right before it.
        "ttft_pairs": {
            "short": [(r.median_ttft, p) for r, p in zip(singles, b["prefill_short"])],
            "long": [(r.ttft, p) for r, p in zip(longs, b["prefill_long"])],
        },
        "tokens": levels[1]["tokens"],
        "levels": levels,
    }
    return baselines, ours


def _median_runs(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if all(r[k] is not None for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": runs}


async def peer_levels(url: str, sets: dict, tokens: int, model=None) -> dict:
    """A peer's tok/s and TTFTs at 1 (each one-stream prompt, median), 4 and 8 streams: the requests ours got."""
    out = {1: level([await run_concurrent(url, [body(p, tokens, model, True)]) for p in sets["singles"]])}
    for size in (4, 8):
        out[size] = level([await run_concurrent(url, [body(p, tokens, model, True) for p in burst(sets, size)])])
    return out
