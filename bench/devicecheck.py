"""The device check (`python -m bench.devicecheck`, `make device-check`): the app on CUDA, or the CPU.

A GPU machine here has no network, so the checkpoints are built on the spot: a random gpt-oss
(sliding and full attention layers, MoE) and a random Llama, both with the tiny tests' harmony
tokenizer (`--scale` widens them so a GPU has work to do). For each, app.py serves it exactly as
a Space runs it, through transformers' continuous batching; the same greedy requests go one
after another, then all at once. Printed beside transformers `generate` on the same device (one
request, then the prompts as one padded batch): tokens/s, the ratio together/alone, the most
rows the health answer showed decoding together, and whether every answer equals its
one-at-a-time answer.

    python -m bench.devicecheck                      # CUDA when there is one, 4 and 8 streams
    python -m bench.devicecheck --device cpu --streams 4 --tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import servers
from bench.client import new_client, wait_ready

PORT = 7911


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.devicecheck", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--streams", type=int, nargs="+", default=[4, 8], help="concurrent streams (default 4 8)")
    p.add_argument("--tokens", type=int, default=128, help="new tokens a request (default 128)")
    p.add_argument("--scale", type=int, default=0, help="width multiplier of the random models (0: 1 on CPU, 16 on CUDA)")
    p.add_argument("--models", nargs="+", default=["gpt-oss", "llama"], choices=["gpt-oss", "llama"])
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    return p.parse_args(argv)


def build(kind: str, folder: Path, scale: int) -> Path:
    """A random checkpoint of `kind` in `folder`, with the tiny tests' tokenizer."""
    import torch
    from transformers import AutoTokenizer, GptOssForCausalLM, LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(servers.ROOT))
    from tests.support.tiny_models import build_tiny_gpt_oss, offline_vocabulary

    # The tokenizer and the server's harmony need o200k_base.tiktoken: no network on a GPU machine here.
    offline_vocabulary(Path.home() / ".cache" / "gptoss-space" / "tiktoken")

    base = build_tiny_gpt_oss(folder / "gpt-oss-base", seed=1)
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    if kind == "gpt-oss":
        config = GptOssForCausalLM.config_class.from_pretrained(base)
        config.hidden_size, config.intermediate_size = 64 * scale, 64 * scale
        config.head_dim = 16 * max(1, scale // 4)
        model = GptOssForCausalLM(config)
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64 * scale, intermediate_size=128 * scale,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=4096, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(config)
        tok.chat_template = ("{% for m in messages %}<|start|>{{ m['role'] }}<|message|>{{ m['content'] }}<|end|>{% endfor %}"
                             "{% if add_generation_prompt %}<|start|>assistant<|message|>{% endif %}")
    out = folder / kind
    model.to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return out


async def _post(url: str, body: dict) -> tuple[dict, float]:
    async with new_client() as client:
        t0 = time.perf_counter()
        r = await client.post(url, json=body)
        return r.json(), time.perf_counter() - t0


async def serve_and_measure(model_dir: Path, device: str, streams: int, tokens: int) -> dict:
    srv = servers.ours(PORT, tempfile.mkdtemp(prefix="gptoss-devcheck-"), gptoss_model=str(model_dir),
                       gptoss_device=device, gptoss_engine_runner="transformers", gptoss_rate_limit_enabled="false",
                       gptoss_max_batch_size=str(max(streams, 8)), gptoss_log_level="WARNING")
    try:
        await wait_ready(srv.ready_url, 600, srv.proc)
        bodies = [{"messages": [{"role": "user", "content": f"Tell me about the number {i}."}], "stream": False,
                   "temperature": 0, "max_tokens": tokens} for i in range(streams)]
        await _post(srv.chat_url, bodies[0])  # warm-up: the first pass builds kernels and caches
        t0 = time.perf_counter()
        alone = [await _post(srv.chat_url, b) for b in bodies]
        alone_wall = time.perf_counter() - t0
        seen: list[int] = []

        async def watch():
            async with httpx.AsyncClient(timeout=5) as client:
                while True:
                    health = (await client.get(srv.ready_url)).json()
                    seen.append(health["details"]["batch"]["active"])
                    await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        t0 = time.perf_counter()
        together = await asyncio.gather(*[_post(srv.chat_url, b) for b in bodies])
        together_wall = time.perf_counter() - t0
        watcher.cancel()
    finally:
        srv.stop()
    count = lambda answers: sum(a["usage"]["completion_tokens"] for a, _ in answers)  # noqa: E731
    text = lambda answers: [a["choices"][0]["message"] for a, _ in answers]  # noqa: E731
    return {
        "streams": streams,
        "alone_tps": count(alone) / alone_wall,
        "together_tps": count(together) / together_wall,
        "ratio": (count(together) / together_wall) / (count(alone) / alone_wall),
        "max_active": max(seen, default=0),
        "same_answers": text(alone) == text(together),
        "tokens": count(together),
    }


def generate_figures(model_dir: Path, device: str, streams: int, tokens: int) -> dict:
    """transformers `generate` on the same device: one request alone, then `streams` prompts as one padded batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from gptoss_space.backends.local.loading import pick_dtype
    from gptoss_space.settings import Settings

    dtype = pick_dtype(Settings(device=device), device)  # what the server picked
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    vocab = model.config.vocab_size
    prompts = [torch.randint(10, vocab - 10, (60 + 3 * i,)).tolist() for i in range(streams)]

    def run(batch: list[list[int]]) -> float:
        width = max(len(p) for p in batch)
        x = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        for i, p in enumerate(batch):
            x[i, width - len(p):], mask[i, width - len(p):] = torch.tensor(p), 1
        x, mask = x.to(device), mask.to(device)
        with torch.inference_mode():
            _sync(device)
            t0 = time.perf_counter()
            model.generate(x, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
            _sync(device)
        return len(batch) * tokens / (time.perf_counter() - t0)

    run(prompts[:1])  # warm-up
    return {"generate_one_tps": statistics.median(run(prompts[:1]) for _ in range(2)), "generate_batch_tps": run(prompts)}


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def table(rows: list[dict]) -> str:
    lines = ["| model | device | streams | alone tok/s | together tok/s | together / alone | rows seen together | "
             "same answers | `generate` 1 stream tok/s | `generate` padded batch tok/s |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['model']} | {r['device']} | {r['streams']} | {r['alone_tps']:.1f} | {r['together_tps']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['max_active']} | {'yes' if r['same_answers'] else 'NO'} | "
                     f"{r['generate_one_tps']:.1f} | {r['generate_batch_tps']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    import torch

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    scale = a.scale or (16 if device == "cuda" else 1)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"device check on {gpu}, models x{scale}, {a.tokens} new tokens a request", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gptoss-devcheck-models-") as tmp:
        for kind in a.models:
            model_dir = build(kind, Path(tmp), scale)
            for n in a.streams:
                figures = asyncio.run(serve_and_measure(model_dir, device, n, a.tokens))
                figures.update(generate_figures(model_dir, device, n, a.tokens), model=kind, device=gpu)
                rows.append(figures)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print("\n" + table(rows))
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
