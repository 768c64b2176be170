"""The cost of a grammar per token: a constrained stream's decode rate beside an unconstrained one, same run.

`grammar_figures(url, ...)` measures, on a running server, streams in turns: one free (a long
story), one under a json_schema response_format whose answer cannot end early (an array of at
least ITEMS objects), median of `reps` each; then 8 clients at once, half of them constrained,
against 8 free ones, to show that mixed rows still decode as one batch. Both kinds run to the
same max_tokens; the rate is tokens after the first over the time from the first to the last.

    python -m bench.grammar                 # starts app.py on the embedded model, prints the figures
    python -m bench.grammar --tokens 128 --reps 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys

from bench.client import run_concurrent, stream_chat, wait_ready

ITEMS = 60
SCHEMA = {
    "type": "object",
    "properties": {
        "chapters": {
            "type": "array",
            "minItems": ITEMS,
            "items": {
                "type": "object",
                "properties": {
                    "title": {"type": "string", "maxLength": 60},
                    "summary": {"type": "string", "maxLength": 200},
                    "words": {"type": "integer", "minimum": 0},
                    "mood": {"enum": ["calm", "tense", "joyful", "sad"]},
                },
                "required": ["title", "summary", "words", "mood"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["chapters"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "story_plan", "schema": SCHEMA, "strict": True}}
FREE = "Write a long, detailed story about a lighthouse keeper and a storm."
CONSTRAINED = "Plan a long story about a lighthouse keeper and a storm, chapter by chapter, as JSON."


def _body(constrained: bool, tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": CONSTRAINED if constrained else FREE}], "max_tokens": tokens, "temperature": 0}
    return {**body, "response_format": FORMAT} if constrained else body


def _check(res, constrained: bool) -> None:
    if res.error:
        raise RuntimeError(f"{'constrained' if constrained else 'free'} stream failed: {res.error}")
    if constrained:
        text = "".join(res.text)
        assert text.startswith('{"chapters": [{"title": '), text[:80]


async def grammar_figures(url: str, *, tokens: int = 128, reps: int = 3, clients: int = 8) -> dict:
    """Decode tokens/s of a constrained stream and a free one (medians, in turns), their ratio, and the mixed batch."""
    free, constrained = [], []
    await stream_chat(url, _body(True, 8))  # the grammar vocabulary is built at the first constrained request
    for _ in range(reps):
        for kind, rates in ((False, free), (True, constrained)):
            res = await stream_chat(url, _body(kind, tokens))
            _check(res, kind)
            rates.append(res.decode_tps)
    out = {
        "free_tps": statistics.median(free),
        "constrained_tps": statistics.median(constrained),
        "free_runs": [round(r, 1) for r in free],
        "constrained_runs": [round(r, 1) for r in constrained],
    }
    out["ratio"] = out["constrained_tps"] / out["free_tps"]
    # The best run of each: other load on the machine only ever slows a run down.
    out["best_ratio"] = max(constrained) / max(free)
    plain = await run_concurrent(url, [_body(False, tokens) for _ in range(clients)])
    mixed = await run_concurrent(url, [_body(i % 2 == 1, tokens) for i in range(clients)])
    for res, i in zip(mixed.streams, range(clients)):
        _check(res, i % 2 == 1)
    out.update(
        clients=clients,
        free_batch_tps=plain.aggregate_tps,
        mixed_batch_tps=mixed.aggregate_tps,
        mixed_ratio=mixed.aggregate_tps / plain.aggregate_tps,
        mixed_wall_s=mixed.wall,
        free_wall_s=plain.wall,
    )
    return out


def table(f: dict) -> str:
    return "\n".join([
        "| stream | decode tok/s |",
        "| --- | --- |",
        f"| free (one stream) | {f['free_tps']:.1f} |",
        f"| json_schema (one stream) | {f['constrained_tps']:.1f} ({f['ratio']:.2f}x; best runs {f['best_ratio']:.2f}x) |",
        f"| {f['clients']} free clients, all tokens / wall | {f['free_batch_tps']:.1f} |",
        f"| {f['clients']} mixed clients (half json_schema) | {f['mixed_batch_tps']:.1f} ({f['mixed_ratio']:.2f}x) |",
    ])


async def _main(a: argparse.Namespace) -> dict:
    from bench import servers

    server = servers.ours(a.port, a.cache_dir, gptoss_rate_limit_enabled="false", gptoss_log_level="WARNING")
    try:
        await wait_ready(server.base + "/api", 600, server.proc)
        return await grammar_figures(server.base + "/v1/chat/completions", tokens=a.tokens, reps=a.reps)
    finally:
        server.stop()


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.grammar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--port", type=int, default=7911)
    p.add_argument("--cache-dir", default=os.environ.get("GPTOSS_CACHE_DIR", os.path.expanduser("~/.cache/gptoss-space")))
    a = p.parse_args(argv)
    figures = asyncio.run(_main(a))
    print(table(figures))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
