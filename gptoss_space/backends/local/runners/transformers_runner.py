"""The generic batch runner: any transformers causal LM through its own forward and a left-padded DynamicCache.

Used for the architectures the lean runner does not cover (gpt-oss, sliding-window models, GPUs).
Rows share one left-padded cache; new rows are prefilled apart and merged in; removed rows are
dropped with the cache's batch_select_indices and the padding nobody needs is trimmed.
"""

from __future__ import annotations

import torch


def batchable(model) -> bool:
    """Rows can be merged only when every layer keeps a plain full-length KV cache."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # an architecture without a config-driven cache: stay safe, one at a time
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class HFRunner:
    def __init__(self, model, *, max_batch_size: int, max_context: int, pad_id: int = 0):
        self.model = model
        self.pad_id = pad_id
        self.max_rows = max_batch_size if batchable(model) else 1
        self.device = next(model.parameters()).device
        self.reset()

    def reset(self) -> None:
        self.rows = 0
        self._cache = None
        self._mask: torch.Tensor | None = None  # [B, T] 1 for real tokens, 0 for left padding
        self._pos: torch.Tensor | None = None  # [B] next position id per row

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        from transformers import DynamicCache

        n, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=pos.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._merge(cache, mask, mask.sum(-1))
        return out.logits[:, -1, :]

    def _merge(self, cache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        n = mask.shape[0]
        if not self.rows:
            self._cache, self._mask, self._pos, self.rows = cache, mask, pos, n
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def left_pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for mine, theirs in zip(self._cache.layers, cache.layers):
            mine.keys = torch.cat([left_pad(mine.keys, 2), left_pad(theirs.keys, 2)], dim=0)
            mine.values = torch.cat([left_pad(mine.values, 2), left_pad(theirs.values, 2)], dim=0)
        self._mask = torch.cat([left_pad(self._mask, 1), left_pad(mask, 1)], dim=0)
        self._pos = torch.cat([self._pos, pos])
        self.rows += n

    def decode(self, tokens: list[int]) -> torch.Tensor:
        B = self.rows
        self._mask = torch.cat([self._mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
        out = self.model(
            input_ids=torch.tensor(tokens, dtype=torch.long)[:, None].to(self.device),
            attention_mask=self._mask.to(self.device),
            position_ids=self._pos[:, None].to(self.device),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._pos = self._pos + 1
        return out.logits[:, -1, :]

    def remove(self, rows: list[int]) -> list[int]:
        gone = set(rows)
        keep = [i for i in range(self.rows) if i not in gone]
        if not keep:
            self.reset()
            return []
        index = torch.tensor(keep, dtype=torch.long)
        self._cache.batch_select_indices(index.to(self.device))
        self._mask, self._pos, self.rows = self._mask[index], self._pos[index], len(keep)
        # Trim the left padding no remaining row needs.
        first = int(self._mask.any(0).int().argmax())
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
        return keep
