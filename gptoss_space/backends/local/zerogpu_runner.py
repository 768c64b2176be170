"""ZeroGPU generation: one sequence per @spaces.GPU call, its tokens streamed back to a pump thread.

On ZeroGPU a GPU exists only inside a call decorated with @spaces.GPU, which runs in a worker
process: the engine thread cannot live there, and callbacks into the parent's event loop would
fire in the wrong process. So the decorated function is a generator that runs the engine inline
(`Engine.run_inline`) and yields plain picklable items: token ids (each after its logprobs
record when the request asked for them), then ("stop"|"length", n), or an exception. A thread in the parent feeds them to the sequence's callbacks, so the rest of the
backend (detokenizing, stop sequences, harmony parsing, cancellation) is the same as elsewhere.
"""

from __future__ import annotations

import logging
import threading

from gptoss_space.backends.local.engine import Engine, Sequence
from gptoss_space.backends.local.sampling import TokenLogprobs
from gptoss_space.backends.local.zerogpu import duration_for_tokens, gpu_task

log = logging.getLogger(__name__)


class ZeroGPURunner:
    """Engine's submit/wake/stop interface, one @spaces.GPU call per request."""

    def __init__(self, model, settings, *, eos_ids: set[int], max_context: int, pad_id: int):
        self.model, self.settings = model, settings
        self.eos_ids, self.max_context, self.pad_id = eos_ids, max_context, pad_id
        self.max_batch_size = 1
        self._active = 0
        self._lock = threading.Lock()

        def duration(prompt_ids, max_new_tokens, sampler) -> int:
            return duration_for_tokens(max_new_tokens, settings)

        self._generate = gpu_task(self._tokens, duration, settings=settings)

    def _tokens(self, prompt_ids: list[int], max_new_tokens: int, sampler):
        """Runs where the GPU is (the @spaces.GPU worker): yields token ids, then the finish."""
        engine = Engine(
            self.model, eos_ids=self.eos_ids, max_batch_size=1, max_context=self.max_context,
            pad_id=self.pad_id, runner="transformers",
        )
        out: list = []

        def on_token(token: int) -> bool:
            # The worker's sampler is a copy: its logprobs record travels with the token to the parent's.
            if sampler.records:
                out.append(sampler.records.popleft())
            out.append(token)
            return False

        seq = Sequence(
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            sampler=sampler,
            on_token=on_token,
            on_finish=lambda reason, n: out.append((reason, n)),
            on_error=out.append,
        )
        for _ in engine.run_inline(seq):
            yield from out
            out.clear()
        yield from out

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 10.0) -> None:
        pass

    def wake(self) -> None:
        pass

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return 0

    def submit(self, seq: Sequence) -> None:
        threading.Thread(target=self._pump, args=(seq,), name="gptoss-zerogpu", daemon=True).start()

    def _pump(self, seq: Sequence) -> None:
        with self._lock:
            self._active += 1
        n = 0
        stream = self._generate(seq.prompt_ids, seq.max_new_tokens, seq.sampler)
        try:
            for item in stream:
                if seq.cancelled.is_set():
                    seq.on_finish("cancelled", n)
                    return
                if isinstance(item, TokenLogprobs):
                    seq.sampler.records.append(item)
                elif isinstance(item, int):
                    n += 1
                    if seq.on_token(item):
                        seq.on_finish("stop", n)
                        return
                elif isinstance(item, tuple):
                    seq.on_finish(*item)
                    return
                else:
                    seq.on_error(item)
                    return
            seq.on_error(RuntimeError("the GPU call ended without finishing"))
        except Exception as e:  # the GPU call itself failed (quota, worker crash): the client hears of it
            log.exception("ZeroGPU generation failed")
            seq.on_error(e)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
            with self._lock:
                self._active -= 1
