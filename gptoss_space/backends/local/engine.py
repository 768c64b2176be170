"""One inference thread decoding a continuous batch: requests join between steps, finished ones leave.

Each step runs one forward pass over every active sequence, then every row's token is chosen at
once (`sampling.choose`, each row with its own parameters). New requests are prefilled together
(grouped by length so little is padding) and join the running batch; finished or cancelled rows
are dropped. One stream is simply a batch of one.

The forward passes live in a runner: `llama_runner.LlamaRunner` for Llama-architecture models on
CPU (packed weights, preallocated cache, few ops a layer), `transformers_runner.HFRunner` for everything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from gptoss_space.backends.local.openmp import release_pool
from gptoss_space.backends.local.sampling import Sampler, choose

log = logging.getLogger(__name__)

# A joining group may pad to at most this much more than its real tokens (plus a little slack).
_PAD_WASTE = 1.25
# Requests of a burst reach the engine a few ms apart (each is parsed, templated and tokenized in turn).
BURST_GAP_S = 0.004


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
    computed: tuple | None = None  # chunked prefill: (keys, values, tokens computed so far)


def make_runner(model, *, max_batch_size: int, max_context: int, pad_id: int, kind: str = "auto", prefix_cache: int = 4):
    """The lean runner where it reproduces the model (kind "auto" or "lean"), else transformers' forward."""
    from gptoss_space.backends.local.runners import llama_runner
    from gptoss_space.backends.local.runners.transformers_runner import HFRunner

    if kind != "transformers" and llama_runner.supports(model):
        return llama_runner.LlamaRunner(model, max_batch_size=max_batch_size, max_context=max_context, prefix_entries=prefix_cache)
    if kind == "lean":
        log.warning("the lean runner does not support %s; using transformers' forward", type(model).__name__)
    return HFRunner(model, max_batch_size=max_batch_size, max_context=max_context, pad_id=pad_id)


class Engine:
    def __init__(
        self,
        model,
        *,
        eos_ids: set[int],
        max_batch_size: int,
        max_context: int,
        pad_id: int = 0,
        runner: str = "auto",
        threads: int = 0,
        prefix_cache: int = 4,
        burst_wait_ms: float = 25.0,
        chunk_tokens: int = 0,
    ):
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = model
        self.eos_ids = eos_ids
        self.max_context = max_context
        self.runner = make_runner(
            model, max_batch_size=max_batch_size, max_context=max_context, pad_id=pad_id, kind=runner, prefix_cache=prefix_cache
        )
        self.max_batch_size = self.runner.max_rows
        # A prompt longer than this is prefilled a chunk per step, so the decoding rows keep going.
        self.chunk_tokens = chunk_tokens if hasattr(self.runner, "extend") else 0
        self._chunking: list[Sequence] = []
        self.burst_max_s = burst_wait_ms / 1000 if self.max_batch_size > 1 else 0.0
        self._inbox: deque[Sequence] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Batch state, touched only by the engine thread: rows[i] is the runner's row i.
        self.rows: list[Sequence] = []
        self._last: list[int] = []  # the token each row feeds next
        self.steps = 0

    # -- public, any thread -------------------------------------------------------------------

    def start(self) -> None:
        # Building the runner ran torch ops on this thread: its OpenMP pool goes, the engine's is the only one.
        release_pool()
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
        return len(self._inbox) + len(self._chunking)

    def run_inline(self, seq: Sequence):
        """Generate one sequence on the calling thread, yielding after each step.

        For ZeroGPU, where generation must happen inside a @spaces.GPU call (a worker process)
        and the engine thread cannot live. The engine must not be started.
        """
        with torch.inference_mode():
            self._guarded(self._prefill, [seq])
            while self.rows:
                yield
                self._guarded(self._decode_step, list(self.rows))

    # -- engine thread --------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            warm_up = getattr(self.runner, "warm_up", None)
            if warm_up is not None:
                try:
                    warm_up(stop=lambda: bool(self._inbox) or self._stopping)
                except Exception:  # only a head start: serving works without it
                    log.exception("engine warm-up failed")
            rounds = 0  # prefills in a row without a decode step
            while True:
                with self._cv:
                    while not self._stopping and not self._inbox and not self.rows and not self._chunking:
                        self._cv.wait()
                    if not self.rows and not self._chunking:
                        self._gather_burst()
                    if self._stopping:
                        break
                    room = self.max_batch_size - len(self.rows) - len(self._chunking)
                    joining = [self._inbox.popleft() for _ in range(min(room, len(self._inbox)))]
                joining = [s for s in joining if not self._drop_if_cancelled(s)]
                if self.chunk_tokens:
                    self._chunking += [s for s in joining if len(s.prompt_ids) > self.chunk_tokens]
                    joining = [s for s in joining if len(s.prompt_ids) <= self.chunk_tokens]
                for group in _groups(joining):
                    self._guarded(self._prefill, group)
                if self._chunking:
                    self._guarded(self._prefill_chunk, self._chunking[:1])
                with self._cv:
                    arrived = bool(self._inbox) and len(self.rows) < self.max_batch_size
                # A burst of requests arrives over a few ms while the first one prefills: let the
                # rest join before the next decode step (their first token comes one step sooner),
                # but never hold the decoding rows back more than two prefills in a row.
                if joining and arrived and rounds < 2:
                    rounds += 1
                    continue
                rounds = 0
                if self.rows:
                    self._guarded(self._decode_step, list(self.rows))
        for seq in list(self.rows) + list(self._inbox) + self._chunking:
            seq.on_error(RuntimeError("server shutting down"))
        self.rows.clear()
        self._inbox.clear()
        self._chunking.clear()

    def _gather_burst(self) -> None:
        """With the cores idle, wait while requests keep arriving (a gap of BURST_GAP_S, BURST_MAX_S at most).

        Prefilling a short prompt costs about one full read of the weights, like a decode step: a
        burst of clients prefilled as one batch gets its first tokens a whole pass sooner than the
        first client alone and then the rest. A lone request pays one gap. Called holding _cv.
        """
        if self.burst_max_s <= 0:
            return
        deadline = time.monotonic() + self.burst_max_s
        while not self._stopping and len(self._inbox) < self.max_batch_size:
            seen = len(self._inbox)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(min(BURST_GAP_S, left))
            if len(self._inbox) == seen:
                return

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
            for seq in dict.fromkeys([*seqs, *self.rows]):
                seq.on_error(e)
            self.rows, self._last = [], []
            self.runner.reset()

    def _prefill(self, seqs: list[Sequence]) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        logits = self.runner.prefill([s.prompt_ids for s in seqs])
        t1, c1 = time.perf_counter(), time.thread_time()
        self.rows.extend(seqs)
        self._last.extend([0] * len(seqs))
        self._choose(seqs, logits, offset=len(self.rows) - len(seqs))
        if log.isEnabledFor(logging.DEBUG):
            tokens = sum(len(s.prompt_ids) for s in seqs)
            log.debug(
                "prefill: %d rows, %d prompt tokens (%d computed, the rest from the prefix cache), %.1f ms "
                "(forward %.1f ms, engine thread CPU %.1f ms); %d rows decoding",
                len(seqs), tokens, getattr(self.runner, "last_fresh", tokens), (time.perf_counter() - t0) * 1e3,
                (t1 - t0) * 1e3, (c1 - c0) * 1e3, len(self.rows),
            )

    def _prefill_chunk(self, seqs: list[Sequence]) -> None:
        """One chunk of the first long prompt, between two decode steps; the last chunk adds its row."""
        seq = seqs[0]
        if self._drop_if_cancelled(seq):
            self._chunking.remove(seq)
            return
        done = seq.computed[2] if seq.computed else 0
        left = len(seq.prompt_ids) - done
        if left > self.chunk_tokens:
            seq.computed = self.runner.extend(seq.prompt_ids, seq.computed, done + self.chunk_tokens)
            return
        self._chunking.remove(seq)
        computed, seq.computed = seq.computed, None
        t0 = time.perf_counter()
        logits = self.runner.prefill([seq.prompt_ids], computed={0: computed})
        log.debug("chunked prefill of %d tokens done (last chunk %.1f ms)", len(seq.prompt_ids), (time.perf_counter() - t0) * 1e3)
        self.rows.append(seq)
        self._last.append(0)
        self._choose([seq], logits, offset=len(self.rows) - 1)

    def _decode_step(self, rows: list[Sequence]) -> None:
        logits = self.runner.decode(self._last)
        self.steps += 1
        self._choose(rows, logits, offset=0)

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor, offset: int) -> None:
        """Pick each row's token, hand it over, and drop the rows that are done."""
        tokens = choose(logits, [s.sampler for s in seqs])
        done: list[int] = []
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            row = offset + i
            if seq.cancelled.is_set():
                seq.on_finish("cancelled", seq.generated)
                done.append(row)
                continue
            self._last[row] = token
            if token in self.eos_ids:
                seq.on_finish("stop", seq.generated)
                done.append(row)
                continue
            seq.generated += 1
            if seq.on_token(token):
                seq.on_finish("stop", seq.generated)
                done.append(row)
            elif seq.generated >= seq.max_new_tokens or len(seq.prompt_ids) + seq.generated >= self.max_context:
                seq.on_finish("length", seq.generated)
                done.append(row)
        if done:
            order = self.runner.remove(done)
            self.rows = [self.rows[i] for i in order]
            self._last = [self._last[i] for i in order]


def _groups(seqs: list[Sequence]) -> list[list[Sequence]]:
    """Joining requests in prefill groups of similar length, so a long prompt does not pad many short ones."""
    if len(seqs) < 2:
        return [seqs] if seqs else []
    ordered = sorted(seqs, key=lambda s: len(s.prompt_ids))
    groups, group, real = [], [], 0
    for s in ordered:
        n = len(s.prompt_ids)
        if group and (len(group) + 1) * n > _PAD_WASTE * (real + n) + 32:
            groups.append(group)
            group, real = [], 0
        group.append(s)
        real += n
    groups.append(group)
    return groups
