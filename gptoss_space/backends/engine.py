"""One inference thread decoding a continuous batch: requests join between steps, finished ones leave.

Each step runs one forward pass over every active sequence (left-padded KV cache, per-row
positions), then each row picks its token with its own sampler. New requests are prefilled
together and merged into the running batch; finished or cancelled rows are dropped and the
padding they leave is trimmed. One stream is simply a batch of one.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from .sampling import Sampler

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request inside the engine. Callbacks run on the engine thread and must be quick."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampler: Sampler
    on_token: Callable[[int], bool]  # returns True when the caller wants to stop (a stop sequence)
    on_finish: Callable[[str, int], None]  # (finish_reason, completion_tokens)
    on_error: Callable[[BaseException], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0


class Engine:
    def __init__(self, model, *, eos_ids: set[int], max_batch_size: int, max_context: int, pad_id: int = 0):
        self.model = model
        self.eos_ids = eos_ids
        self.max_context = max_context
        self.pad_id = pad_id
        self.max_batch_size = max_batch_size if self._batchable(model) else 1
        self.device = next(model.parameters()).device
        self._inbox: deque[Sequence] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Batch state, touched only by the engine thread.
        self.rows: list[Sequence] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # [B, T] 1 for real tokens, 0 for left padding
        self._pos: torch.Tensor | None = None  # [B] next position id per row
        self._last: torch.Tensor | None = None  # [B, 1] last chosen token per row
        self.steps = 0

    @staticmethod
    def _batchable(model) -> bool:
        """Rows can be merged only when every layer keeps a plain full-length KV cache."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            cache = DynamicCache(config=model.config)
        except Exception:  # an architecture without a config-driven cache: stay safe, one at a time
            return False
        return all(type(layer) is DynamicLayer for layer in cache.layers)

    # -- public, any thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gptoss-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread:
            self._thread.join(timeout)

    def submit(self, seq: Sequence) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine stopped")
            self._inbox.append(seq)
            self._cv.notify()

    def wake(self) -> None:
        """Lets the loop notice a cancellation of a request still in the inbox."""
        with self._cv:
            self._cv.notify()

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def waiting(self) -> int:
        return len(self._inbox)

    # -- engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stopping and not self._inbox and not self.rows:
                        self._cv.wait()
                    if self._stopping:
                        break
                    room = self.max_batch_size - len(self.rows)
                    joining = [self._inbox.popleft() for _ in range(min(room, len(self._inbox)))]
                joining = [s for s in joining if not self._drop_if_cancelled(s)]
                if joining:
                    self._guarded(self._prefill, joining)
                if self.rows:
                    self._guarded(self._decode_step, list(self.rows))
        for seq in list(self.rows) + list(self._inbox):
            seq.on_error(RuntimeError("server shutting down"))
        self.rows.clear()
        self._inbox.clear()

    def _drop_if_cancelled(self, seq: Sequence) -> bool:
        if seq.cancelled.is_set():
            seq.on_finish("cancelled", 0)
            return True
        return False

    def _guarded(self, fn, seqs: list[Sequence]) -> None:
        try:
            fn(seqs)
        except Exception as e:  # reaches every affected client as an error, never a hang
            log.exception("generation step failed")
            failed = set(seqs) | set(self.rows)
            for seq in failed:
                seq.on_error(e)
            self._reset()

    def _reset(self) -> None:
        self.rows, self._cache, self._mask, self._pos, self._last = [], None, None, None, None

    def _prefill(self, seqs: list[Sequence]) -> None:
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, width - len(s.prompt_ids) :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - len(s.prompt_ids) :] = 1
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
        self._merge(seqs, cache, mask, mask.sum(-1))
        self._choose(seqs, out.logits[:, -1, :], offset=len(self.rows) - len(seqs))

    def _merge(self, seqs: list[Sequence], cache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self._cache, self._mask, self._pos = list(seqs), cache, mask, pos
            self._last = torch.zeros((len(seqs), 1), dtype=torch.long)
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
        self._last = torch.cat([self._last, torch.zeros((len(seqs), 1), dtype=torch.long)])
        self.rows.extend(seqs)

    def _decode_step(self, rows: list[Sequence]) -> None:
        self._mask = torch.cat([self._mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        out = self.model(
            input_ids=self._last.to(self.device),
            attention_mask=self._mask.to(self.device),
            position_ids=self._pos.unsqueeze(1).to(self.device),
            past_key_values=self._cache,
            use_cache=True,
        )
        self._pos = self._pos + 1
        self.steps += 1
        self._choose(rows, out.logits[:, -1, :], offset=0)

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor, offset: int) -> None:
        """Pick each row's token, hand it over, and drop the rows that are done."""
        logits = logits.float().cpu()
        done: list[int] = []
        for i, seq in enumerate(seqs):
            row = offset + i
            if seq.cancelled.is_set():
                seq.on_finish("cancelled", seq.generated)
                done.append(row)
                continue
            token = seq.sampler(logits[i])
            self._last[row, 0] = token
            if token in self.eos_ids:
                seq.on_finish("stop", seq.generated)
                done.append(row)
                continue
            seq.generated += 1
            if seq.on_token(token):
                seq.on_finish("stop", seq.generated)
                done.append(row)
            elif seq.generated >= seq.max_new_tokens or int(self._pos[row]) + 1 >= self.max_context:
                seq.on_finish("length", seq.generated)
                done.append(row)
        if done:
            self._drop(done)

    def _drop(self, rows: list[int]) -> None:
        keep = [i for i in range(len(self.rows)) if i not in set(rows)]
        if not keep:
            self._reset()
            return
        index = torch.tensor(keep, dtype=torch.long)
        self._cache.batch_select_indices(index.to(self.device))
        self.rows = [self.rows[i] for i in keep]
        self._mask, self._pos, self._last = self._mask[index], self._pos[index], self._last[index]
        # Trim the left padding no remaining row needs.
        first = int(self._mask.any(0).int().argmax())
        if first > 0:
            self._mask = self._mask[:, first:]
            for layer in self._cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
