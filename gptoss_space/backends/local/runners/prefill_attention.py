"""Attention for new rows being prefilled into the lean runner's RowCache, where a cached prefix or other rows sit beside them.

Row i's prompt fills columns [a_i, end) of the shared cache, its last f_i tokens new. SDPA's
is_causal assumes queries and keys start together (top-left), which new tokens after a cached
prefix do not: they take an explicit mask (offset_causal), or several rows one call (BatchedPrefill).
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
import torch.nn.functional as F

from gptoss_space.backends.local.kv_cache import RowCache


class Heads(Protocol):
    """What attention needs of the runner (llama_runner.LlamaRunner)."""

    n_heads: int
    head_dim: int
    scale: float

NEG = float("-inf")
# A prefix new prompts share is computed once when that spares this many tokens in all (the copies
# cost two index copies a layer, like about 2 tokens' compute).
SHARED_MIN = 16


class BatchedPrefill:
    """Attention for several new rows at once: queries right-aligned in [n, H, F, D], keys the rows' shared columns.

    Row i's prompt fills columns [a_i, end) and its f_i new tokens the last f_i of them. Query slot j
    of every row stands for column end - F + j: it sees the keys of its own row from a_i up to itself.
    Slots before a row's new tokens are padding; they see every key (never an all-masked row) and
    their outputs are dropped.
    """

    def __init__(self, spans: list[tuple[int, int, int]], end: int, fresh_max: int, real: int, extra: int, dtype: torch.dtype):
        n, F_ = len(spans), fresh_max
        self.first, self.n, self.F, self.extra = spans[0][0], n, F_, extra
        self.width = end - min(a for _, a, _ in spans)  # key columns [end - width, end)
        self.end = end
        rows, cols, slots = [], [], []
        gather = torch.zeros(n * F_, dtype=torch.long)  # packed token of each slot (padding: token 0)
        o0 = 0
        for i, (row, _, fresh) in enumerate(spans):
            rows += [row] * fresh
            cols += range(end - fresh, end)
            slot0 = i * F_ + F_ - fresh
            gather[slot0 : slot0 + fresh] = torch.arange(o0, o0 + fresh)
            slots += range(slot0, slot0 + fresh)
            o0 += fresh
        self.rows, self.cols = torch.tensor(rows), torch.tensor(cols)
        self.gather, self.slots = gather, torch.tensor(slots)
        self.real = real
        key_col = torch.arange(end - self.width, end)
        query_col = torch.arange(end - F_, end)
        starts = torch.tensor([a for _, a, _ in spans])
        allowed = (key_col[None, None] <= query_col[None, :, None]) & (key_col[None, None] >= starts[:, None, None])
        is_pad = torch.arange(F_)[None] < (F_ - torch.tensor([f for _, _, f in spans]))[:, None]  # [n, F]
        allowed |= is_pad[:, :, None]
        self.mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, NEG)[:, None]  # [n, 1, F, W]

    def write(self, c: RowCache, li: int, qk: torch.Tensor, qkv: torch.Tensor, H: int, KV: int) -> None:
        """The new tokens' keys and values into their rows' columns of layer li."""
        c.k[li][self.rows, :, self.cols] = qk[: self.real, H:]
        c.v[li][self.rows, :, self.cols] = qkv[: self.real, H + KV :]

    def attend(self, runner: Heads, c: RowCache, li: int, qk: torch.Tensor) -> torch.Tensor:
        """Attention output [packed tokens (+ dummies), H * D] of layer li, after `write`."""
        H, D = runner.n_heads, runner.head_dim
        kc, vc = c.k[li], c.v[li]  # [rows, KV, capacity, D]
        q = qk[:, :H].index_select(0, self.gather).view(self.n, self.F, H, D).transpose(1, 2)
        rows, lo = slice(self.first, self.first + self.n), self.end - self.width
        o = F.scaled_dot_product_attention(
            q, kc[rows, :, lo : self.end], vc[rows, :, lo : self.end], attn_mask=self.mask, enable_gqa=True, scale=runner.scale
        )
        out = o.transpose(1, 2).reshape(self.n * self.F, H * D).index_select(0, self.slots)
        if self.extra:
            out = torch.cat([out, out.new_zeros((self.extra, H * D))])
        return out


class ColumnCopy:
    """Columns a row takes from another row of the same prefill, layer by layer: a prompt prefix they share, computed once."""

    def __init__(self):
        self._dst_rows, self._dst_cols, self._src_rows, self._src_cols = [], [], [], []
        self.index = None

    def add(self, src_row: int, src_start: int, dst_row: int, dst_start: int, lo: int, hi: int) -> None:
        """Prompt positions [lo, hi) of dst_row (its position 0 in column dst_start) from src_row's (src_start)."""
        n = hi - lo
        self._dst_rows += [dst_row] * n
        self._src_rows += [src_row] * n
        self._dst_cols += range(dst_start + lo, dst_start + hi)
        self._src_cols += range(src_start + lo, src_start + hi)

    def done(self) -> None:
        if self._dst_rows:
            self.index = tuple(torch.tensor(x) for x in (self._dst_rows, self._dst_cols, self._src_rows, self._src_cols))

    def __call__(self, kc: torch.Tensor, vc: torch.Tensor) -> None:
        """kc, vc: one layer's cache [rows, KV, capacity, D], the source rows' new columns already written."""
        if self.index is not None:
            dr, dc, sr, sc = self.index
            kc[dr, :, dc] = kc[sr, :, sc]
            vc[dr, :, dc] = vc[sr, :, sc]


def shared_prefixes(prompts: list[list[int]], cached: list[int], min_gain: int = SHARED_MIN) -> dict[int, tuple[int, int]]:
    """{row: (leader row, n)}: rows that copy their first n tokens' keys and values from a leader row of the same prefill.

    `cached`: how much of each prompt the prefix store already holds. Groups are chosen greedily,
    the one that spares the most computed tokens first (a batch holds a few prompts, so trying
    every leader and every length is cheap), while a group spares min_gain tokens at least.
    """
    n = len(prompts)
    lcp = [[min(len(os.path.commonprefix([prompts[a], prompts[b]])), len(prompts[b]) - 1) for b in range(n)] for a in range(n)]
    shares: dict[int, tuple[int, int]] = {}
    pool = set(range(n))
    while len(pool) > 1:
        best_gain, best = 0, None
        for lead in pool:
            for t in {lcp[lead][j] for j in pool if j != lead}:
                members = [j for j in pool if j != lead and lcp[lead][j] >= t and t > cached[j]]
                gain = sum(t - cached[j] for j in members)
                if gain > best_gain:
                    best_gain, best = gain, (lead, t, members)
        if best is None or best_gain < min_gain:
            break
        lead, t, members = best
        shares.update((j, (lead, t)) for j in members)
        pool -= {lead, *members}
    return shares


def offset_causal(queries: int, cached: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [1, 1, queries, cached + queries]: query j sees the cached prefix and new keys up to itself."""
    keys = torch.arange(cached + queries)[None]
    allowed = keys <= torch.arange(queries)[:, None] + cached
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, NEG)[None, None]
