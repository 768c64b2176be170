"""Next-token choice for one row of a batch: greedy, temperature, top_p, penalties, seed."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def __post_init__(self) -> None:
        if self.seed is not None:
            self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """logits: 1-D over the vocabulary (any float dtype). Returns the chosen id."""
        if self.counts and (self.presence_penalty or self.frequency_penalty):
            logits = logits.float().clone()
            ids = torch.tensor(list(self.counts), dtype=torch.long)
            n = torch.tensor(list(self.counts.values()), dtype=torch.float32)
            logits[ids] -= self.presence_penalty + self.frequency_penalty * n
        if self.temperature <= 0:
            token = int(torch.argmax(logits))
        else:
            token = self._sample(logits.float() / self.temperature)
        self.counts[token] = self.counts.get(token, 0) + 1
        return token

    def _sample(self, logits: torch.Tensor) -> int:
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            keep = (torch.cumsum(probs, dim=-1) - probs) < self.top_p
            probs = probs * keep
            choice = torch.multinomial(probs, 1, generator=self.generator)
            return int(order[choice])
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
