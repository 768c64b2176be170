"""Same-run baselines with plain transformers: model.generate (fp32, bf16, static cache), raw prefill, a padded batch.

A worker process (`python -m bench.baselines SPEC.json`, JSON commands on stdin, one JSON answer
a line on stdout) that bench.run drives in turns with our server: each baseline is measured right
before the figure it is compared with, so the drift of a shared machine hits both alike. While
one side measures, the other waits idle.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

# On a GPU machine every baseline runs on CUDA, as our server does (GPTOSS_DEVICE=auto).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


class _Clock:
    """A generate streamer that stamps every new token (the first put() is the prompt)."""

    def __init__(self):
        self.stamps: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def load(path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(DEVICE).eval()


def generate_one(model, ids: list[int], new_tokens: int, eos: list[int], **kwargs) -> dict:
    """One stream through model.generate, greedy: time to first token and decode speed, timed per token."""
    clock = _Clock()
    x = torch.tensor([ids], device=DEVICE)
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False,
            streamer=clock, eos_token_id=eos, pad_token_id=eos[0], **kwargs,
        )
    s = clock.stamps
    n = int(out.shape[1] - len(ids))
    # The EOS that ends a sequence is not a completion token (our server does not count it either).
    if n and int(out[0, -1]) in eos:
        n -= 1
        s = s[:-1]
    decode = (len(s) - 1) / (s[-1] - s[0]) if len(s) > 1 else None
    return {"ttft": s[0] - t0 if s else None, "decode_tps": decode, "tokens": n}


def prefill(model, ids: list[int], reps: int) -> float:
    """Median seconds of one forward pass over the prompt with a fresh cache (logits for the last position only)."""
    from transformers import DynamicCache

    x = torch.tensor([ids], device=DEVICE)
    times = []
    with torch.inference_mode():
        for _ in range(reps + 1):
            _sync()
            t0 = time.perf_counter()
            model(input_ids=x, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
            _sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def generate_batch(model, prompts: list[list[int]], new_tokens: int, eos: list[int]) -> dict:
    """The prompts left-padded into one generate call: all new tokens (until each row's EOS) over the wall time."""
    width = max(len(p) for p in prompts)
    x = torch.full((len(prompts), width), eos[0], dtype=torch.long)
    mask = torch.zeros_like(x)
    for i, p in enumerate(prompts):
        x[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    x, mask = x.to(DEVICE), mask.to(DEVICE)
    with torch.inference_mode():
        _sync()
        t0 = time.perf_counter()
        out = model.generate(
            x, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0]
        )
        _sync()
        wall = time.perf_counter() - t0
    tokens = 0
    for row in out[:, width:].tolist():
        for t in row:
            if t in eos:
                break
            tokens += 1
    return {"tokens": tokens, "wall": wall, "aggregate_tps": tokens / wall}


class Worker:
    """Holds the baseline models; answers one JSON command a line, so the bench can interleave its figures with ours."""

    def __init__(self, path: str, eos: list[int], warm: list[int]):
        self.path, self.eos, self.warm = path, eos, warm
        self.models: dict[str, object] = {}

    def model(self, dtype: str):
        if dtype not in self.models:
            m = load(self.path, getattr(torch, dtype))
            generate_one(m, self.warm, 8, self.eos)  # first-call allocations and oneDNN kernel choice
            generate_one(m, self.warm, 8, self.eos, cache_implementation="static")
            self.models[dtype] = m
        return self.models[dtype]

    def handle(self, cmd: dict):
        op = cmd["op"]
        if op == "generate":
            extra = {"cache_implementation": "static"} if cmd.get("static") else {}
            return generate_one(self.model(cmd["dtype"]), cmd["ids"], cmd["n"], self.eos, **extra)
        if op == "prefill":
            return prefill(self.model("bfloat16"), cmd["ids"], cmd.get("reps", 3))
        if op == "batch":
            m = self.model("bfloat16")
            generate_batch(m, cmd["prompts"], 4, self.eos)  # this batch shape's first call
            return generate_batch(m, cmd["prompts"], cmd["n"], self.eos)
        if op == "unload":
            self.models.pop(cmd["dtype"], None)
            return None
        if op == "info":
            return {"threads": torch.get_num_threads(), "device": DEVICE}
        raise ValueError(f"unknown op {op}")


def serve(spec: dict) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    worker = Worker(spec["model_path"], spec["eos"], spec["warm"])
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            return
        try:
            out = {"ok": worker.handle(cmd)}
        except Exception as e:  # reported to the bench, which notes it
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        serve(json.load(f))
