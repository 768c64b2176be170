"""Attention for new rows being prefilled into the lean runner's RowCache, where a cached prefix or other rows sit beside them.

Row i's prompt fills columns [a_i, end) of the shared cache, its last f_i tokens new. SDPA's
is_causal assumes queries and keys start together (top-left), which new tokens after a cached
prefix do not: they take an explicit mask (offset_causal), or several rows one call (BatchedPrefill).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .kvcache import RowCache

if TYPE_CHECKING:
    from .leanllama import LlamaRunner

NEG = float("-inf")


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

    def attend(self, runner: "LlamaRunner", c: RowCache, li: int, qk: torch.Tensor, qkv: torch.Tensor) -> torch.Tensor:
        H, KV, D = runner.n_heads, runner.n_kv, runner.head_dim
        kc, vc = c.k[li], c.v[li]  # [rows, KV, capacity, D]
        kc[self.rows, :, self.cols] = qk[: self.real, H:]
        vc[self.rows, :, self.cols] = qkv[: self.real, H + KV :]
        q = qk[:, :H].index_select(0, self.gather).view(self.n, self.F, H, D).transpose(1, 2)
        rows, lo = slice(self.first, self.first + self.n), self.end - self.width
        o = F.scaled_dot_product_attention(
            q, kc[rows, :, lo : self.end], vc[rows, :, lo : self.end], attn_mask=self.mask, enable_gqa=True, scale=runner.scale
        )
        out = o.transpose(1, 2).reshape(self.n * self.F, H * D).index_select(0, self.slots)
        if self.extra:
            out = torch.cat([out, out.new_zeros((self.extra, H * D))])
        return out


def offset_causal(queries: int, cached: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [1, 1, queries, cached + queries]: query j sees the cached prefix and new keys up to itself."""
    keys = torch.arange(cached + queries)[None]
    allowed = keys <= torch.arange(queries)[:, None] + cached
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, NEG)[None, None]
