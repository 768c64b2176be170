"""The benchmark's table: each figure with its same-run baseline and its target, as markdown."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field


@dataclass
class Row:
    figure: str
    ours: str
    baseline: str
    ratio: str
    target: str
    verdict: str  # PASS / FAIL / info / skipped


@dataclass
class Report:
    command: str
    rows: list[Row] = field(default_factory=list)
    peers: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    def add(self, figure: str, ours: str, baseline: str = "", ratio: str = "", target: str = "", ok: bool | None = None) -> None:
        verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append(Row(figure, ours, baseline, ratio, target, verdict))

    def skip(self, figure: str, why: str) -> None:
        self.rows.append(Row(figure, "-", "-", "-", "-", "skipped"))
        self.notes.append(f"{figure}: skipped, {why}")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def markdown(self) -> str:
        out = ["## Performance (`make bench`)", ""]
        m = self.machine
        if m:
            out.append(
                f"Machine: {m.get('cpu', platform.processor())}, {m.get('cores')} cores; torch {m.get('torch')}, "
                f"transformers {m.get('transformers')}; model {m.get('model')} in {m.get('dtype')}; "
                f"{m.get('new_tokens')} new tokens a request, greedy; run {m.get('date')}."
            )
            out.append("")
        out.append(f"Command: `{self.command}`")
        out.append("")
        out += ["| Figure | Ours | Baseline (same run) | Ratio | Target | Result |", "|---|---|---|---|---|---|"]
        out += [f"| {r.figure} | {r.ours} | {r.baseline} | {r.ratio} | {r.target} | {r.verdict} |" for r in self.rows]
        if self.peers:
            out += ["", "Peers on the same model and prompts (aggregate tok/s includes prefill; TTFT median / worst):", ""]
            out += ["| Server | Streams | Aggregate tok/s | TTFT median | TTFT worst | Decode tok/s per stream |", "|---|---|---|---|---|---|"]
            out += ["| " + " | ".join(p) + " |" for p in self.peers]
        if self.notes:
            out += ["", "Notes:", ""]
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def tps(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f} tok/s"


def x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"
