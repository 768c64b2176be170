"""The benchmark (`python -m bench.run`, `make bench`): every figure beside a baseline measured in the same run.

Order: our real server (app.py) on loopback measured in turns with the transformers baselines
(bench.baselines, a worker process), then the peers (transformers serve, llama.cpp) when they
are installed, then start-up and proxy figures. The table goes to stdout and to bench/results.md.

    python -m bench.run                # the full run (about 6-9 minutes on 2 vCPUs)
    python -m bench.run --quick        # 64 new tokens, one repetition, no cold start, no peers
    python -m bench.run --no-peers --no-cold --tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import paired, servers
from bench.client import run_concurrent, stream_chat, time_to_first_byte, wait_ready
from bench.grammar import grammar_figures
from bench.report import Report, ms, tps, x

log = logging.getLogger("bench")
HERE = Path(__file__).resolve().parent
LONG_PROMPTS = 5  # 1,000-token prompts (median): each pays a prefill near a second, so more of them are cheap
PORTS = {"ours": 7901, "cold": 7902, "proxy": 7903, "upstream": 7904, "tserve": 7905, "llama": 7906}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=256, help="new tokens a request (default 256)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of the one-stream figures (median)")
    p.add_argument("--quick", action="store_true", help="64 tokens, 1 repetition, no cold start, no peers, no static/fp32 extras")
    p.add_argument("--no-peers", action="store_true", help="skip transformers serve and llama.cpp")
    p.add_argument("--no-cold", action="store_true", help="skip the cold start (GGUF conversion into a fresh cache)")
    p.add_argument("--no-proxy", action="store_true", help="skip the proxy figures")
    p.add_argument("--cache-dir", default=os.environ.get("GPTOSS_CACHE_DIR", ""), help="converted-model cache (GPTOSS_CACHE_DIR)")
    p.add_argument("--out", default=str(HERE / "results.md"), help="where the markdown table goes")
    a = p.parse_args(argv)
    if a.quick:
        a.tokens, a.reps, a.no_peers, a.no_cold = min(a.tokens, 64), 1, True, True
    return a


async def main(a: argparse.Namespace, report: Report) -> None:
    from transformers import AutoTokenizer

    from bench.prompts import prompt_set
    from gptoss_space.backends.local.loading import _cache_dir
    from gptoss_space.settings import Settings

    settings = Settings(cache_dir=a.cache_dir) if a.cache_dir else Settings()
    cache_dir = str(settings.cache_dir)
    model_dir = _cache_dir(settings)
    if not (model_dir / "config.json").exists():
        print(f"preparing the converted model in {cache_dir} (once) ...", flush=True)
        srv = servers.ours(PORTS["ours"], cache_dir)
        try:
            await wait_ready(srv.ready_url, 300, srv.proc)
        finally:
            srv.stop()
    tok = AutoTokenizer.from_pretrained(model_dir)
    # Disjoint subjects per measurement (see bench.prompts): only the system prompt repeats.
    sets = {
        "singles": prompt_set(tok, settings, 50, a.reps, first=0),
        # Concurrent clients: one burst a repetition, each with prompts of its own (the 4 and the 8
        # on other subjects, the repetitions with other first words), so none finds another's cached.
        "bursts": {
            8: [prompt_set(tok, settings, 50, 8, first=8, opening=k) for k in range(a.reps)],
            4: [prompt_set(tok, settings, 50, 4, first=28, opening=k) for k in range(a.reps)],
        },
        # One client alone right after each burst of 8: the burst's worst TTFT is judged against it.
        "alone": [prompt_set(tok, settings, 50, 1, first=3 + k, opening=k + 1)[0] for k in range(a.reps)],
        "long": prompt_set(tok, settings, 1000, a.reps if a.quick else max(a.reps, LONG_PROMPTS), first=16),
        "warm": prompt_set(tok, settings, 50, 4, first=24),
    }
    eos = sorted({tok.eos_token_id} | ({tok.convert_tokens_to_ids("<|im_end|>")} - {None}))
    report.machine.update(_machine(a, settings))
    sets["conc"], sets["conc4"] = sets["bursts"][8][0], sets["bursts"][4][0]  # what the peers get: one burst each
    shorts = [p.tokens for k in ("singles", "warm", "alone") for p in sets[k]] + [p.tokens for b in sets["bursts"].values() for s in b for p in s]
    report.note(
        f"Prompts as the model sees them (our system prompt and date included): short {min(shorts)}-{max(shorts)} tokens, "
        f"long {min(p.tokens for p in sets['long'])}-{max(p.tokens for p in sets['long'])} tokens. No prompt repeats: "
        "one-stream repetitions, every burst of 4 and of 8 concurrent clients and the long prompts each have their own (a prefix cache can "
        "reuse only the shared template and system prompt)."
    )

    # 1-3. Our server and the transformers baselines, measured in turns.
    print("our server and the transformers baselines, in turns ...", flush=True)
    base = paired.BaselineWorker(str(model_dir), eos, sets["warm"][3].ids)
    await base.ask(op="info")  # its imports done, so they do not slow our start-up being measured
    srv = servers.ours(PORTS["ours"], cache_dir)
    try:
        warm_start = await wait_ready(srv.ready_url, 120, srv.proc)
        await _page_ready(report, srv)
        base.quiet = srv.proc
        baselines, ours = await paired.measure(a, srv.chat_url, sets, base, progress=lambda m: print(m, flush=True))
        print("a grammar's cost per token ...", flush=True)
        grammar = await grammar_figures(srv.chat_url, tokens=min(a.tokens, 128), reps=a.reps)
    finally:
        srv.stop()
        base.close()
    _figures(a, report, baselines, ours, warm_start)
    _grammar(report, grammar)

    # 3. Peers.
    peers = {"gptoss-space (ours)": ours["levels"]}
    if a.no_peers:
        report.note("Peers: skipped (--no-peers / --quick).")
    else:
        peers.update(await _measure_peers(a, report, str(model_dir), sets))
    for name, levels in peers.items():
        for n, c in levels.items():
            report.peers.append([name, str(n), f"{c['agg']:.1f}", ms(c["ttft_med"]), ms(c["ttft_max"]), tps(c["decode_med"])])
    _peer_verdict(report, peers)

    # 4. Start-up and proxy.
    if a.no_cold:
        report.skip("Cold start (fresh cache: GGUF conversion)", "--no-cold")
    else:
        print("cold start ...", flush=True)
        await _cold_start(report)
    if a.no_proxy:
        report.skip("Proxy figures", "--no-proxy")
    else:
        print("proxy ...", flush=True)
        await _proxy(report)
    import torch

    if torch.cuda.is_available():
        report.note(f"GPU: every figure above ran on CUDA ({torch.cuda.get_device_name(0)}), ours and the baselines in bfloat16.")
    else:
        report.skip("GPU figures", "no CUDA device in this run; on a GPU the same command measures everything on CUDA")


def _grammar(report: Report, g: dict) -> None:
    """7. Structured outputs: a json_schema stream's decode rate beside a free one, and 8 mixed clients (bench/grammar.py)."""
    report.add("7. json_schema stream decode (grammar masks)", tps(g["constrained_tps"]), f"{tps(g['free_tps'])} free stream",
               x(g["ratio"]), ">= 0.8x", g["ratio"] >= 0.8)
    report.add(f"7. {g['clients']} mixed clients, half json_schema: aggregate", tps(g["mixed_batch_tps"]),
               f"{tps(g['free_batch_tps'])} {g['clients']} free clients", x(g["mixed_ratio"]), ">= 0.8x", g["mixed_ratio"] >= 0.8)
    report.note(f"Grammar runs (tok/s): free {g['free_runs']}, json_schema {g['constrained_runs']}; best runs {g['best_ratio']:.2f}x.")


def _machine(a, settings) -> dict:
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from gptoss_space.backends.local.loading import pick_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        cpu += f" with {torch.cuda.get_device_name(0)}"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": "SmolLM2-135M-Instruct (embedded GGUF, de-quantized)",
        "dtype": str(pick_dtype(settings, device)).removeprefix("torch."),
        "new_tokens": a.tokens,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _figures(a, report: Report, base: dict, ours: dict, warm_start: float) -> None:
    b16 = base["bf16"]
    r = ours["decode"] / b16["decode_tps"]
    report.add("1. One stream decode, /api SSE", tps(ours["decode"]), f"{tps(b16['decode_tps'])} bf16 generate", x(r), ">= 1.0x", r >= 1.0)
    if "fp32" in base:
        f = base["fp32"]["decode_tps"]
        report.add("1. (beside) fp32 generate decode", tps(ours["decode"]), f"{tps(f)} fp32 generate", x(ours["decode"] / f), "", None)
    if "bf16_static" in base:
        s = base["bf16_static"]["decode_tps"]
        report.add("1. (beside) bf16 generate, static cache", tps(ours["decode"]), f"{tps(s)} static-cache generate", x(ours["decode"] / s), "", None)
    for label, key, pkey in (("short", "ttft_short", "prefill_short"), ("long", "ttft_long", "prefill_long")):
        # Judged prompt by prompt against the raw prefill of the same prompt right before it (the
        # host's speed drifts by a quarter within minutes here): the median of the pairs' margins.
        pairs = ours["ttft_pairs"][label]
        ratio = statistics.median(t / p for t, p in pairs)
        over = statistics.median(t - (1.1 * p + 0.020) for t, p in pairs)
        report.add(
            f"2. TTFT via /api, {label} prompt (median of {len(pairs)} prompts)", ms(ours[key]), f"{ms(base[pkey])} raw bf16 prefill",
            f"{ratio:.2f}x prefill (median of per-prompt ratios)", "<= 1.1x + 20 ms, prompt by prompt", over <= 0,
        )
    report.note(
        "TTFT prompt by prompt, ours / raw prefill of the same prompt right before it: "
        + "; ".join(
            f"{label} " + ", ".join(f"{ms(t)} / {ms(p)}" for t, p in ours["ttft_pairs"][label]) for label in ("short", "long")
        ) + "."
    )
    if "fp32" in base:
        report.add("2. (beside) generate TTFT bf16 / fp32, short", ms(ours["ttft_short"]), f"{ms(b16['ttft'])} / {ms(base['fp32']['ttft'])}", "", "", None)
    eight, batch8 = ours["levels"][8], base["batch"][8]["aggregate_tps"]
    r = eight["agg_ratio"]
    report.add(f"3. 8 clients: aggregate tok/s (prefill incl.; median of {a.reps} bursts)", tps(eight["agg"]), f"{tps(batch8)} generate, padded batch of 8", x(r), ">= 0.8x", r >= 0.8)
    r = eight["ttft_ratio"]
    report.add(
        f"3. 8 clients: worst TTFT (median of {a.reps} bursts)", ms(eight["ttft_max"]), f"{ms(eight['alone_ttft'])} one client alone",
        f"{x(r)} (median of the bursts' own ratios)", "<= 3x", r <= 3.0,
    )
    report.note(
        "Bursts of 8 one by one: aggregate ours / generate "
        + ", ".join(f"{tps(o)} / {tps(g)}" for o, g in eight["agg_pairs"])
        + "; worst TTFT / one client alone right after "
        + ", ".join(f"{ms(w)} / {ms(o)} ({w / o:.2f}x)" for w, o in eight["ttft_pairs"]) + "."
    )
    four, batch4 = ours["levels"][4], base["batch"][4]["aggregate_tps"]
    report.add("3. (beside) 4 clients: aggregate tok/s", tps(four["agg"]), f"{tps(batch4)} generate, padded batch of 4", x(four["agg_ratio"]), "", None)
    report.add("5. Start-up, warm cache (GET /api 200)", f"{warm_start:.2f} s", "", "", "<= 5 s", warm_start <= 5.0)
    report.note(f"Tokens per one-stream request: ours {ours['tokens']}, generate {[r['tokens'] for r in b16['runs']]} (both greedy, both stop at EOS).")
    report.note(
        f"Baselines: transformers in a worker process ({base['threads']} torch threads), measured in turns with our server "
        "(each baseline right before the figure it is compared with; the other side waits idle). Raw prefill = one bf16 "
        "forward over the prompt with a fresh cache (median of 3). generate runs greedy with its defaults (dynamic cache). "
        "Concurrency ratios are medians of per-burst ratios: each burst against generate on a padded batch of the same "
        "prompts right before it, and its worst TTFT against one client alone (a prompt of its own) right after it."
    )


async def _measure_peers(a, report: Report, model_dir: str, sets: dict) -> dict:
    out = {}
    why = servers.transformers_serve_available()
    if why:
        report.note(f"transformers serve: skipped, {why}.")
    else:
        print("peer: transformers serve --continuous-batching ...", flush=True)
        start = lambda: servers.transformers_serve(PORTS["tserve"], model_dir, True)  # noqa: E731
        out.update(await _peer(report, "transformers serve --continuous-batching", start, a, sets, sets["warm"][1]))
    why = servers.llama_cpp_available()
    if why:
        report.note(f"llama.cpp: skipped, {why}.")
    else:
        from gptoss_space.backends.local.loading import embedded_gguf_path

        print("peer: llama.cpp (llama-cpp-python server) ...", flush=True)
        gguf = str(embedded_gguf_path())
        start = lambda: servers.llama_cpp(PORTS["llama"], gguf, os.cpu_count() or 2)  # noqa: E731
        out.update(await _peer(report, "llama.cpp (llama-cpp-python, Q4_1 GGUF)", start, a, sets, sets["warm"][2]))
    return out


async def _peer(report: Report, name: str, start, a, sets: dict, warm) -> dict:
    srv = start()
    try:
        await wait_ready(srv.ready_url, 180, srv.proc)
        res = await stream_chat(srv.chat_url, {**paired.body(warm, 8, srv.model, True)})  # warm-up
        if res.error:
            raise RuntimeError(f"warm-up failed: {res.error}")
        return {name: await paired.peer_levels(srv.chat_url, sets, a.tokens, srv.model)}
    except Exception as e:
        report.note(f"{name}: failed ({e}); its log: {srv.tail(5)!r}")
        return {}
    finally:
        srv.stop()


def _peer_verdict(report: Report, peers: dict) -> None:
    ours = peers["gptoss-space (ours)"]
    for name, levels in peers.items():
        if name == "gptoss-space (ours)":
            continue
        goal = name.startswith("transformers serve")  # the goal: ahead of it everywhere; llama.cpp is for reference
        for n, c in levels.items():
            if n in ours and c["agg"]:
                r = ours[n]["agg"] / c["agg"]
                mine = f"{tps(ours[n]['agg'])}, TTFT {ms(ours[n]['ttft_med'])}"
                theirs = f"{tps(c['agg'])}, TTFT {ms(c['ttft_med'])}"
                report.add(f"4. vs {name}, {n} stream(s)", mine, theirs, x(r), "> 1.0x" if goal else "", (r > 1.0) if goal else None)


async def _cold_start(report: Report) -> None:
    cache = servers.fresh_dir()
    srv = servers.ours(PORTS["cold"], cache)
    try:
        t = await wait_ready(srv.ready_url, 300, srv.proc)
        report.add("5. Start-up, cold (fresh cache: GGUF conversion)", f"{t:.1f} s", "", "", "", None)
    except Exception as e:
        report.note(f"cold start failed: {e}; log: {srv.tail(5)!r}")
    finally:
        srv.stop()
        servers.remove_dir(cache)


async def _proxy(report: Report) -> None:
    up = servers.upstream(PORTS["upstream"], chunks=20, interval_s=0.05)
    try:
        await wait_ready(up.base + "/health", 20, up.proc)
        srv = servers.proxy(PORTS["proxy"], up.chat_url)
        try:
            t = await wait_ready(srv.ready_url, 60, srv.proc)
            report.add("5. Start-up, proxy mode", f"{t:.2f} s", "", "", "<= 2 s", t <= 2.0)
            await _page_ready(report, srv)
            await _proxy_figures(report, up, srv)
        finally:
            srv.stop()
    except Exception as e:
        report.note(f"proxy figures failed: {e}")
    finally:
        up.stop()


async def _proxy_figures(report: Report, up, srv) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}  # two chunks 50 ms apart
    for _ in range(5):  # connections, first-call paths
        await time_to_first_byte(up.chat_url, body)
        await time_to_first_byte(srv.chat_url, body)
    direct, proxied = [], []
    for _ in range(40):  # interleaved, so drift hits both alike
        direct.append(await time_to_first_byte(up.chat_url, body))
        proxied.append(await time_to_first_byte(srv.chat_url, body))
    d, p = statistics.median(direct), statistics.median(proxied)
    report.add("6. Proxy: time to first byte (median of 40)", ms_f(p), f"{ms_f(d)} upstream direct", f"+{(p - d) * 1000:.1f} ms", "<= upstream + 5 ms", p <= d + 0.005)
    res = await run_concurrent(srv.chat_url, [{**body, "max_tokens": 20}] * 200)  # 20 chunks over about 1 s
    ok = len(res.ok) == 200 and all(s.chunks >= 20 for s in res.ok)
    report.add("6. Proxy: 200 concurrent streams", f"{len(res.ok)}/200 complete, {len(res.errors)} errors", "", "", "no error", ok)
    if res.errors:
        report.note(f"proxy stream errors: {sorted(set(res.errors))[:3]}")


async def _page_ready(report: Report, srv) -> None:
    """Measure in steady state: the page mounts in the background after /api is up, and its Gradio import holds the GIL for seconds."""
    try:
        t = await wait_ready(srv.base + "/", 180, srv.proc)
        report.note(f"{srv.name}: the page (GET /) was ready {t:.1f} s after /api; figures are measured after it.")
    except TimeoutError:
        report.note(f"{srv.name}: the page never answered 200; figures measured anyway.")


def ms_f(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _cpu_times() -> list[int] | None:
    """The machine's CPU time counters (Linux /proc/stat, all cores), or None."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return [int(v) for v in fields[1:9]] if fields[0] == "cpu" and len(fields) >= 9 else None
    except (OSError, ValueError, IndexError):
        return None


def cli(argv: list[str] | None = None) -> int:
    a = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    report = Report(command.strip())
    t0, cpu0 = time.perf_counter(), _cpu_times()
    try:
        asyncio.run(main(a, report))
    except Exception as e:
        report.note(f"benchmark stopped early: {type(e).__name__}: {e}")
        print(f"logs in {servers.LOGS}", file=sys.stderr)
    note = f"Benchmark wall time {time.perf_counter() - t0:.0f} s."
    cpu1 = _cpu_times()
    if cpu0 and cpu1 and sum(cpu1) > sum(cpu0):
        # /proc/stat's 8th column: time this VM's vCPUs were ready to run but the host ran something else.
        note += f" CPU time stolen by the host (other tenants) during the run: {100 * (cpu1[7] - cpu0[7]) / (sum(cpu1) - sum(cpu0)):.1f}%."
    report.note(note)
    text = report.markdown()
    print("\n" + text)
    Path(a.out).write_text(text)
    return 0 if all(r.verdict != "FAIL" for r in report.rows) else 1


if __name__ == "__main__":
    sys.exit(cli())
