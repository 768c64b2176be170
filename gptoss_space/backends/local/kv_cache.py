"""The lean runner's KV cache: preallocated rows that share right-aligned columns, and a store of recent prompts' KV.

Every row's newest token sits in column `end - 1`; a row's first valid column is its start and
the columns left of it are masked. Decoding writes one column for all rows at once; growing
reallocates (doubling) or first drops the columns no row uses; a finished row is replaced by the
last row, so removing costs one row's copy.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import torch

_NEG = float("-inf")


class RowCache:
    def __init__(self, layers: int, max_rows: int, kv_heads: int, head_dim: int, max_context: int, dtype: torch.dtype):
        self.layers, self.max_rows, self.kv_heads, self.head_dim = layers, max_rows, kv_heads, head_dim
        self.max_context, self.dtype = max_context, dtype
        self.k = self.v = None  # [layers, max rows, kv heads, capacity, head dim]
        self.pos = torch.zeros(max_rows, dtype=torch.long)  # next position id of each row
        self.reset()

    def reset(self) -> None:
        """Forget every row (the buffers stay allocated for the next batch)."""
        self.rows, self.end, self.starts = 0, 0, []
        self.lo, self.mask = 0, None

    @property
    def capacity(self) -> int:
        return 0 if self.k is None else self.k.shape[3]

    def _alloc(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Zeros, not empty: masked columns are multiplied by 0 and must not hold NaN bit patterns.
        shape = (self.layers, self.max_rows, self.kv_heads, capacity, self.head_dim)
        return torch.zeros(shape, dtype=self.dtype), torch.zeros(shape, dtype=self.dtype)

    def layout(self, width: int) -> None:
        """Make the rows' common end at least `width`, with room for one more column; moves live columns if needed."""
        cap = self.capacity
        lo = min(self.starts) if self.rows else self.end
        span = self.end - lo
        new_end = max(width, self.end)
        if new_end + 1 > cap:
            new_end = max(width, span)  # drop the columns no row uses any more
        if new_end == self.end and new_end + 1 <= cap:
            return
        k, v = self.k, self.v
        if new_end + 1 > cap:
            cap = max(new_end + 1, min(max(2 * cap, 256), self.max_context + 1))
            k, v = self._alloc(cap)
        if self.rows and span:
            src_k = self.k[:, : self.rows, :, lo : self.end]
            src_v = self.v[:, : self.rows, :, lo : self.end]
            if k is self.k:  # an overlapping move inside the same buffer
                src_k, src_v = src_k.clone(), src_v.clone()
            k[:, : self.rows, :, new_end - span : new_end] = src_k
            v[:, : self.rows, :, new_end - span : new_end] = src_v
        shift = new_end - self.end
        self.starts = [s + shift for s in self.starts]
        self.k, self.v, self.end = k, v, new_end
        self.sync()

    def add_rows(self, lengths: list[int]) -> None:
        """Rows whose prompts (already written) end at column `end`."""
        first = self.rows
        self.pos[first : first + len(lengths)] = torch.tensor(lengths, dtype=torch.long)
        self.starts += [self.end - n for n in lengths]
        self.rows += len(lengths)
        self.sync()

    def sync(self) -> None:
        """The additive mask every layer shares: -inf left of each row's start (None when no row needs one)."""
        self.lo = min(self.starts) if self.rows else self.end
        if self.rows > 1 and any(s != self.lo for s in self.starts):
            cols = torch.arange(self.capacity)[None]
            starts = torch.tensor(self.starts, dtype=torch.long)[:, None]
            self.mask = torch.zeros((self.rows, 1, 1, self.capacity), dtype=self.dtype)
            self.mask.masked_fill_((cols < starts)[:, None, None], _NEG)
        else:
            self.mask = None

    def remove(self, rows: list[int]) -> list[int]:
        """Drops rows; returns, for each remaining slot in order, the old row it now holds."""
        order = list(range(self.rows))
        for r in sorted(rows, reverse=True):
            last = self.rows - 1
            if r != last:
                lo = self.starts[last]
                self.k[:, r, :, lo : self.end] = self.k[:, last, :, lo : self.end]
                self.v[:, r, :, lo : self.end] = self.v[:, last, :, lo : self.end]
                self.starts[r] = self.starts[last]
                self.pos[r] = self.pos[last]
                order[r] = order[last]
            order.pop()
            self.starts.pop()
            self.rows -= 1
        if self.rows == 0:
            self.reset()
        else:
            self.sync()
        return order


class PrefixStore:
    """The KV of recent prompts, so a new prompt skips prefilling what it shares with one (the system prompt).

    The KV of a position depends only on the tokens up to it, so reusing it for a prompt with the
    same first tokens gives the same result as computing it. Least recently used entries go first.
    """

    def __init__(self, entries: int = 4, max_tokens: int = 2048, min_tokens: int = 8):
        self.entries, self.max_tokens, self.min_tokens = entries, max_tokens, min_tokens
        self._store: OrderedDict[int, tuple[list[int], torch.Tensor, torch.Tensor]] = OrderedDict()
        self._next = 0

    def lookup(self, ids: list[int]) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """(keys, values, n): the longest stored prefix of ids, leaving at least the last token to compute."""
        best, best_n = None, 0
        for key, (tokens, _, _) in self._store.items():
            n = len(os.path.commonprefix([tokens, ids[: len(tokens)]]))
            if n > best_n:
                best, best_n = key, n
        best_n = min(best_n, len(ids) - 1)
        if best is None or best_n < self.min_tokens:
            return None, None, 0
        self._store.move_to_end(best)
        _, k, v = self._store[best]
        return k, v, best_n

    def add(self, ids: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [layers, kv heads, len(ids), head dim] views of a row's cache; copied (up to max_tokens)."""
        if self.entries <= 0:
            return
        n = min(len(ids), self.max_tokens)
        for key, (tokens, _, _) in self._store.items():
            if len(tokens) >= n and tokens[:n] == ids[:n]:
                self._store.move_to_end(key)  # already covered
                return
        self._store[self._next] = (list(ids[:n]), k[:, :, :n].clone(), v[:, :, :n].clone())
        self._next += 1
        while len(self._store) > self.entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()
