"""Next-token choice for the rows of a batch: greedy, temperature, top_p, penalties, seed, each row its own.

`choose` works on the whole [rows, vocab] logits at once: one max for the greedy rows, one
softmax for the sampled rows; top_p sorts only the ids above a probability floor instead of the
whole vocabulary (exact, see `_nucleus`), and a draw inverts the CDF with one uniform number
(torch.multinomial over 49k ids costs about 2 ms a row on CPU). A seeded row draws from its own
generator, so its output does not depend on the other rows. A row with a grammar (`grammar.Matcher`)
chooses only among the ids it allows: its mask is applied to the logits first, then its matcher
advances with the chosen id.

Logprobs, for a row whose Sampler has `top_logprobs` set (the other rows pay a flag check):
one log_softmax and one topk over those rows only, of the distribution the token was drawn
from: after the presence/frequency penalties and the temperature, as the issue asks. vLLM
reports this with `logprobs_mode=processed_logprobs`; its default (`raw_logprobs`) is the
model's own distribution, and OpenAI does not document which one it reports. Two choices:
- top_p does not change the reported numbers: they are the penalized, tempered distribution
  before the nucleus cut. Renormalized over the nucleus, every alternative outside it would be
  -inf (no JSON number), and a one-token nucleus would report 0.0 whatever the model thought;
  the chosen token's logprob within the nucleus is this one minus log(nucleus mass).
- a greedy row (temperature 0) reports the penalized logits at temperature 1: at temperature 0
  the distribution is a point mass (0.0 for the argmax, -inf elsewhere), which says nothing.
A logprob of -inf (a token a mask removed) is reported as -9999.0, OpenAI's and vLLM's value.
Each record goes to the row's `Sampler.records` deque, for whoever turns the token into text.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

# What a -inf logprob is reported as (JSON has no infinity): vLLM's and OpenAI's "very unlikely".
LOGPROB_FLOOR = -9999.0


@dataclass
class TokenLogprobs:
    """One choice's logprobs: the chosen id's, and the `top_logprobs` most likely ids with theirs (descending)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


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
    # None: no logprobs (no cost); 0..20: each choice's logprob and this many alternatives, appended to `records`.
    top_logprobs: int | None = None
    records: deque[TokenLogprobs] = field(default_factory=deque)

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
        asking = [i for i, s in enumerate(samplers) if s.top_logprobs is not None]
        if asking:
            _record(logits[asking].float(), [tokens[i] for i in asking], [samplers[i] for i in asking])
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
    asking = [i for i in greedy if samplers[i].top_logprobs is not None]
    if asking:  # the penalized logits at temperature 1 (see the module docstring)
        _record(logits[asking], [tokens[i] for i in asking], [samplers[i] for i in asking])
    if not sampled:
        return tokens
    temps = torch.tensor([samplers[i].temperature for i in sampled], dtype=torch.float32)
    x = logits[sampled] if greedy else logits
    probs = torch.softmax(x.div_(temps[:, None]), dim=-1)
    asking = [j for j, i in enumerate(sampled) if samplers[i].top_logprobs is not None]
    nucleus = [j for j, i in enumerate(sampled) if samplers[i].top_p < 1.0]
    candidates = _candidates(probs[nucleus] if len(nucleus) < len(sampled) else probs) if nucleus else []
    for j, i in enumerate(sampled):
        s = samplers[i]
        if s.top_p >= 1.0:
            tokens[i] = _draw(torch.cumsum(probs[j], 0), s.generator)
        else:
            ids, cdf = _nucleus(probs[j], candidates[nucleus.index(j)], s.top_p)
            tokens[i] = int(ids[_draw(cdf, s.generator)])
    if asking:  # the penalized, tempered logits the draw used, before the nucleus cut
        _record(x[asking], [tokens[sampled[j]] for j in asking], [samplers[sampled[j]] for j in asking])
    return tokens


def _record(logits: torch.Tensor, tokens: list[int], samplers: list[Sampler]) -> None:
    """Each row's log_softmax at the chosen token and at its top ids, appended to its sampler's records.

    logits - logsumexp at the few ids needed: two passes over the vocabulary (logsumexp, topk)
    and no [rows, vocab] log_softmax written out.
    """
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    index = torch.tensor(tokens, dtype=torch.long, device=logits.device)[:, None]
    chosen = (logits.gather(1, index) - lse)[:, 0].clamp_(min=LOGPROB_FLOOR).tolist()
    k = min(max(s.top_logprobs for s in samplers), logits.shape[-1])
    top_values, top_ids = logits.topk(k, dim=-1) if k else (logits[:, :0], logits[:, :0].long())
    top_values, top_ids = (top_values - lse).clamp_(min=LOGPROB_FLOOR).tolist(), top_ids.tolist()
    for r, s in enumerate(samplers):
        n = s.top_logprobs
        s.records.append(TokenLogprobs(tokens[r], chosen[r], list(zip(top_ids[r][:n], top_values[r][:n]))))


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
