"""Same-run baselines with plain transformers: model.generate (fp32, bf16, static cache), raw prefill, a padded batch.

Run by bench.run in its own process (`python -m bench.baselines SPEC.json`), before any server
starts, so nothing else competes for the cores; prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch


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

    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def generate_one(model, ids: list[int], new_tokens: int, eos: list[int], **kwargs) -> dict:
    """One stream through model.generate, greedy: time to first token and decode speed, timed per token."""
    clock = _Clock()
    x = torch.tensor([ids])
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

    x = torch.tensor([ids])
    times = []
    with torch.inference_mode():
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            model(input_ids=x, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
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
    with torch.inference_mode():
        t0 = time.perf_counter()
        out = model.generate(
            x, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, eos_token_id=eos, pad_token_id=eos[0]
        )
        wall = time.perf_counter() - t0
    tokens = 0
    for row in out[:, width:].tolist():
        for t in row:
            if t in eos:
                break
            tokens += 1
    return {"tokens": tokens, "wall": wall, "aggregate_tps": tokens / wall}


def median_run(fn, reps: int) -> dict:
    """fn(i) for i in range(reps) (rep i on prompt i), the median of every field."""
    runs = [fn(i) for i in range(reps)]
    keys = [k for k in runs[0] if all(r[k] is not None for r in runs)]
    return {k: statistics.median(r[k] for r in runs) for k in keys} | {"runs": runs}


def main(spec: dict) -> dict:
    path, n, reps = spec["model_path"], spec["new_tokens"], spec["reps"]
    singles, long_, batch, warm = spec["singles"], spec["long"], spec["batch"], spec["warm"]
    eos = spec["eos"]
    out: dict = {"threads": torch.get_num_threads()}
    bf16 = load(path, torch.bfloat16)
    generate_one(bf16, warm, 8, eos)  # warm-up: first-call allocations and oneDNN kernel choice
    out["bf16"] = median_run(lambda i: generate_one(bf16, singles[i], n, eos), reps)
    out["prefill_short"] = prefill(bf16, singles[0], 5)
    out["prefill_long"] = prefill(bf16, long_, 3)
    generate_batch(bf16, batch, 4, eos)
    out["batch"] = {}
    for size in spec["batch_sizes"]:
        out["batch"][str(size)] = generate_batch(bf16, batch[:size], n, eos)
    if spec.get("static"):
        generate_one(bf16, warm, 8, eos, cache_implementation="static")
        out["bf16_static"] = median_run(lambda i: generate_one(bf16, singles[i], n, eos, cache_implementation="static"), reps)
    del bf16
    if spec.get("fp32"):
        fp32 = load(path, torch.float32)
        generate_one(fp32, warm, 8, eos)
        out["fp32"] = median_run(lambda i: generate_one(fp32, singles[i], n, eos), max(1, reps - 1))
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        result = main(json.load(f))
    print(json.dumps(result))
