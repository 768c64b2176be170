"""ZeroGPU: run a function under @spaces.GPU with a duration sized per call, and be a no-op elsewhere."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def spaces_module(settings: Settings) -> ModuleType | None:
    """The `spaces` package when this process runs on ZeroGPU, else None (nothing imported).

    Hugging Face advises importing `spaces` before torch touches CUDA, so call this early
    (in app.py, before the model loads); later calls return the same module.
    """
    if not settings.zero_gpu:
        return None
    if importlib.util.find_spec("spaces") is None:
        log.warning("SPACES_ZERO_GPU is set but the `spaces` package is not installed: running without @spaces.GPU")
        return None
    return importlib.import_module("spaces")


def duration_for_tokens(max_tokens: int | None, settings: Settings) -> int:
    """Seconds of GPU to ask for a generation of up to max_tokens (None: the server cap).

    A base for the prompt and setup, plus the tokens at the assumed speed, capped: a request
    for less time is scheduled sooner, and ZeroGPU refuses more than a quota allows.
    """
    tokens = settings.max_tokens_cap if max_tokens is None or max_tokens < 0 else min(max_tokens, settings.max_tokens_cap)
    seconds = settings.zero_gpu_base_s + math.ceil(tokens / settings.zero_gpu_tokens_per_s)
    return max(1, min(seconds, settings.zero_gpu_max_duration_s))


def gpu_task(fn: F, duration_for: Callable[..., int], *, settings: Settings | None = None) -> F:
    """fn under @spaces.GPU(duration=...) on ZeroGPU; fn itself (the same object) anywhere else.

    duration_for receives the same arguments as fn and returns seconds; `spaces` calls it on
    every call (its dynamic duration), and the answer is capped at zero_gpu_max_duration_s.
    On ZeroGPU the function runs in a forked worker process: its arguments and results (or,
    for a generator, each yielded item) cross a process boundary and must be picklable, and
    side effects such as putting into an asyncio queue of the parent do not happen there.
    """
    if settings is None:
        from gptoss_space.settings import Settings

        settings = Settings()
    spaces = spaces_module(settings)
    if spaces is None:
        return fn
    cap = settings.zero_gpu_max_duration_s

    def duration(*args: Any, **kwargs: Any) -> int:
        return max(1, min(int(duration_for(*args, **kwargs)), cap))

    log.info("ZeroGPU: %s runs under @spaces.GPU (at most %d s a call)", getattr(fn, "__name__", fn), cap)
    return spaces.GPU(duration=duration)(fn)
