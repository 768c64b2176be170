"""Next-token choice for the rows of a batch: greedy, temperature, top_p, penalties, seed, each row its own.

`choose` works on the whole [rows, vocab] logits at once: one max for the greedy rows, one
softmax for the sampled rows; top_p sorts only the ids above a probability floor instead of the
whole vocabulary (exact, see `_nucleus`), and a draw inverts the CDF with one uniform number
(torch.multinomial over 49k ids costs about 2 ms a row on CPU). A seeded row draws from its own
generator, so its output does not depend on the other rows. A row with a grammar (`grammar.Matcher`)
chooses only among the ids it allows: its mask is applied to the logits first, then its matcher
advances with the chosen id.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sampler:
    temperature: float = 0.8
    top_p: float = 0.9
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    counts: dict[int, int] = field(default_factory=dict)
    generator: torch.Generator | None = None
    grammar: Any = None  # a grammar.Matcher: the row may only choose what it allows

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalized(self) -> bool:
        return bool(self.counts) and bool(self.presence_penalty or self.frequency_penalty)

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """1-D float logits with the presence/frequency penalties of the tokens seen so far."""
        ids = torch.tensor(list(self.counts), dtype=torch.long)
        n = torch.tensor(list(self.counts.values()), dtype=torch.float32)
        logits = logits.float().clone()
        logits[ids] -= self.presence_penalty + self.frequency_penalty * n
        return logits

    def note(self, token: int) -> None:
        if self.grammar is not None:
            self.grammar.advance(token)
        if self.presence_penalty or self.frequency_penalty:
            self.counts[token] = self.counts.get(token, 0) + 1

    def __call__(self, logits: torch.Tensor) -> int:
        """logits: 1-D over the vocabulary (any float dtype). Returns the chosen id."""
        return choose(logits[None], [self])[0]


def choose(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """One token per row of `logits` [rows, vocab] (any float dtype), each row by its own sampler."""
    constrained = [i for i, s in enumerate(samplers) if s.grammar is not None]
    if constrained:
        from gptoss_space.backends.local.grammar import apply_masks

        logits = apply_masks(logits, constrained, [samplers[i].grammar for i in constrained])
    if not any(s.penalized or not s.greedy for s in samplers):
        tokens = _argmax(logits)  # the common greedy batch: one op, no float copy
    else:
        tokens = _choose_mixed(logits, samplers)
    for s, t in zip(samplers, tokens):
        s.note(t)
    return tokens


def _argmax(logits: torch.Tensor) -> list[int]:
    # max(-1) is vectorized on CPU where argmax is not (about 2x faster on a 49k vocabulary); both take the first maximum.
    return logits.max(-1).indices.tolist()


def _choose_mixed(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    rows = list(range(len(samplers)))
    logits = logits.to("cpu", torch.float32, copy=True)  # owned (changed in place); the generators are CPU ones
    for i in rows:
        if samplers[i].penalized:
            logits[i] = samplers[i].penalize(logits[i])
    tokens = [0] * len(samplers)
    greedy = [i for i in rows if samplers[i].greedy]
    if greedy:
        for i, t in zip(greedy, _argmax(logits[greedy])):
            tokens[i] = t
    sampled = [i for i in rows if not samplers[i].greedy]
    if not sampled:
        return tokens
    temps = torch.tensor([samplers[i].temperature for i in sampled], dtype=torch.float32)
    x = logits[sampled] if greedy else logits
    probs = torch.softmax(x.div_(temps[:, None]), dim=-1)
    nucleus = [j for j, i in enumerate(sampled) if samplers[i].top_p < 1.0]
    candidates = _candidates(probs[nucleus] if len(nucleus) < len(sampled) else probs) if nucleus else []
    for j, i in enumerate(sampled):
        s = samplers[i]
        if s.top_p >= 1.0:
            tokens[i] = _draw(torch.cumsum(probs[j], 0), s.generator)
        else:
            ids, cdf = _nucleus(probs[j], candidates[nucleus.index(j)], s.top_p)
            tokens[i] = int(ids[_draw(cdf, s.generator)])
    return tokens


# Ids at or above this probability are the top_p candidates (at most 1/_FLOOR of them per row).
_FLOOR = 1e-4


def _candidates(probs: torch.Tensor) -> list[torch.Tensor]:
    """For each row, the ids at or above the floor: one pass over all the rows."""
    hits = (probs >= _FLOOR).nonzero()
    counts = torch.bincount(hits[:, 0], minlength=probs.shape[0]).tolist()
    return list(hits[:, 1].split(counts))


def _nucleus(probs: torch.Tensor, ids: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest set of most likely ids whose mass reaches top_p (at least one), with its CDF.

    Only the candidates are sorted: if they already hold top_p of the mass, every other id is
    less likely than all of them and outside the nucleus anyway, so this is the exact nucleus.
    """
    cand = probs[ids]
    if float(cand.sum()) >= top_p:
        cand, order = torch.sort(cand, descending=True)
        ids = ids[order]
    else:
        cand, ids = torch.sort(probs, descending=True)
    cdf = torch.cumsum(cand, 0)
    n = max(1, int(((cdf - cand) < top_p).sum()))  # a prefix: the CDF before each id only grows
    return ids[:n], cdf[:n]


def _draw(cdf: torch.Tensor, generator: torch.Generator | None) -> int:
    """An index drawn in proportion to the increments of `cdf` (unnormalized): one uniform number."""
    u = torch.rand((), generator=generator) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), cdf.shape[0] - 1)
