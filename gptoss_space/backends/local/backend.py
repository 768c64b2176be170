"""The local backend: transformers in-process, one engine thread, text deltas bridged to asyncio."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from gptoss_space.backends.base import Backend, Delta, GenerationRequest
from gptoss_space.backends.local.grammar import VocabularyCache
from gptoss_space.backends.local.loading import LoadProgress
from gptoss_space.backends.local.openmp import release_pool
from gptoss_space.backends.local.sampling import Sampler
from gptoss_space.backends.local.token_deltas import TokenDeltas
from gptoss_space.backends.local.zerogpu import spaces_module
from gptoss_space.errors import ContextLengthExceeded, GenerationFailed, InvalidRequest, ModelLoading
from gptoss_space.settings import Settings

log = logging.getLogger(__name__)

# The lean runner prefills a longer prompt in chunks of this many tokens, a decode step of the other rows
# after each: ~0.4 s of prefill a chunk for the 135M model on 2 CPUs, where a whole 8,000-token prompt held
# every other stream for ~50 s.
LEAN_CHUNK_TOKENS = 512
# Prompts longer than this are tokenized off the event loop.
_LONG_PROMPT_CHARS = 20_000


class _Done:
    def __init__(self, reason: str, completion_tokens: int):
        self.reason, self.completion_tokens = reason, completion_tokens


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.model_id = settings.model or "HuggingFaceTB/SmolLM2-135M-Instruct"
        self.ready = False
        self.loaded = None
        self.engine = None
        self.harmony = False
        self.load_error: str | None = None
        self.progress = LoadProgress()
        self._vocabulary = VocabularyCache()  # llguidance's view of the tokenizer, built at the first constrained request
        self._bytes_table = None

    @property
    def native_date(self) -> bool:
        """Harmony prompts carry the date in their own system message."""
        return self.harmony

    async def start(self) -> None:
        # The lean path (no transformers import: seconds off the start) wherever the lean runner will run the model.
        lean = self.settings.engine_runner != "transformers" and spaces_module(self.settings) is None
        try:
            self.loaded = await asyncio.to_thread(_load, self.settings, self.progress, lean)
        except Exception as e:
            self.progress.phase = "failed"
            self.load_error = type(e).__name__
            log.exception("model failed to load")
            raise
        self.model_id = self.loaded.model_id
        self._setup()
        self.ready = True

    def _setup(self) -> None:
        from gptoss_space.backends.local.engine import Engine

        model, tok = self.loaded.model, self.loaded.tokenizer
        self.harmony = getattr(model.config, "model_type", "") == "gpt_oss"
        eos = set()
        for source in (getattr(model.generation_config, "eos_token_id", None), tok.eos_token_id):
            if isinstance(source, int):
                eos.add(source)
            elif source:
                eos.update(source)
        if self.harmony:
            from gptoss_space.backends.local.harmony import harmony_encoding

            eos.update(harmony_encoding().stop_tokens_for_assistant_actions())  # <|return|>, <|call|>
        self.eos_ids = eos
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(eos), 0)
        if spaces_module(self.settings) is not None:
            from gptoss_space.backends.local.zerogpu_runner import ZeroGPURunner

            self.engine = ZeroGPURunner(model, self.settings, eos_ids=eos, max_context=self.max_context, pad_id=pad)
        elif self._lean_runner(model):
            s = self.settings
            self.engine = Engine(
                model, eos_ids=eos, max_batch_size=s.max_batch_size, max_context=self.max_context, pad_id=pad,
                runner="lean", threads=s.torch_threads, prefix_cache=s.prefix_cache_entries,
                burst_wait_ms=s.burst_wait_ms, chunk_tokens=s.prefill_chunk_tokens or LEAN_CHUNK_TOKENS,
            )
        else:
            from gptoss_space.backends.local.paged_engine import PagedEngine

            s = self.settings
            self.engine = PagedEngine(
                model, eos_ids=eos, max_batch_size=s.max_batch_size, max_context=self.max_context,
                threads=s.torch_threads, cache_tokens=s.kv_cache_tokens, chunk_tokens=s.prefill_chunk_tokens,
            )
        self.engine.start()

    def _lean_runner(self, model) -> bool:
        """The lean Llama runner where it reproduces the model (CPU Llama): faster there than transformers' forward."""
        from gptoss_space.backends.local.runners import llama_runner

        return self.settings.engine_runner != "transformers" and llama_runner.supports(model)

    async def close(self) -> None:
        if self.engine:
            await asyncio.to_thread(self.engine.stop)
        self.ready = False

    def health(self) -> dict:
        info: dict = {"backend": "local", "model_loaded": self.model_id, "ready": self.ready}
        if not self.ready:
            info["loading"] = self.progress.as_dict()
        if self.loaded:
            info.update(
                device=self.loaded.device,
                dtype=self.loaded.dtype,
                source=self.loaded.source,
                load_seconds=round(self.loaded.load_s, 2),
                context_length=self.max_context,
            )
        if self.engine:
            info["batch"] = {"active": self.engine.active, "waiting": self.engine.waiting, "max": self.engine.max_batch_size}
        if self.load_error:
            info["load_error"] = self.load_error
        return info

    # -- prompt ---------------------------------------------------------------------------------

    def encode(self, req: GenerationRequest) -> list[int]:
        """Prompt ids in which client text is always text: a user's `<|im_start|>system` is never a control token."""
        if self.harmony:
            from gptoss_space.backends.local.harmony import render_harmony_ids

            return render_harmony_ids(req.messages, **self._harmony_options(req))
        messages, tools = self._template_inputs(req)
        return self.loaded.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=True, add_generation_prompt=True, sanitize_control_tokens=True, return_dict=False
        )

    def _template_inputs(self, req: GenerationRequest) -> tuple[list[dict], list[dict] | None]:
        """Messages and tools as this model's chat template takes them (tool_prompt.py)."""
        from gptoss_space.backends.local.tool_prompt import prompt_inputs

        return prompt_inputs(req.messages, req.tools, getattr(self.loaded.tokenizer, "chat_template", None))

    @staticmethod
    def _harmony_options(req: GenerationRequest) -> dict:
        return {
            "reasoning_effort": req.reasoning_effort or "medium",
            "now": req.now if req.inject_datetime else None,
            "tools": req.tools or None,
        }

    def _tool_grammar(self, req: GenerationRequest) -> None:
        """A forced call (tool_choice "required" or named) is decoded under a grammar of the Hermes format.

        Harmony models are not constrained here: their calls follow harmony's own format, which
        the grammar does not describe; the model is asked for the call in its prompt only.
        """
        from gptoss_space.backends.local.tool_grammar import needs_grammar, tool_call_grammar

        if not self.harmony and req.grammar is None and needs_grammar(req.tools, req.tool_choice):
            req.grammar = tool_call_grammar(req.tools, req.tool_choice, req.parallel_tool_calls)

    def _token_bytes(self):
        """The id -> token text and bytes table of the logprobs entries, built on first use."""
        if self._bytes_table is None:
            from gptoss_space.backends.local.token_logprobs import TokenBytes

            self._bytes_table = TokenBytes(self.loaded.tokenizer)
        return self._bytes_table

    # -- generation -----------------------------------------------------------------------------

    async def _matcher(self, grammar: str):
        """The row's grammar matcher, compiled off the event loop (the tokenizer's view is built once, at first use)."""
        from gptoss_space.backends.local.grammar import GrammarError

        try:
            return await asyncio.to_thread(self._build_matcher, grammar)
        except GrammarError as e:
            raise InvalidRequest(f"Invalid 'response_format': {e}", param="response_format") from None

    def _build_matcher(self, grammar: str):
        n_vocab = int(getattr(self.loaded.model.config, "vocab_size", 0) or 0)
        vocab = self._vocabulary.get(self.loaded.tokenizer, n_vocab=max(n_vocab, len(self.loaded.tokenizer)), eos_ids=self.eos_ids)
        return vocab.matcher(grammar, harmony=self.harmony)

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        if not self.ready:
            raise ModelLoading("Model is loading, try again shortly", retry_after=5)
        from gptoss_space.backends.local.engine import Sequence

        self._tool_grammar(req)
        matcher = await self._matcher(req.grammar) if req.grammar else None
        if sum(len(m["content"]) for m in req.messages) > _LONG_PROMPT_CHARS:
            prompt_ids = await asyncio.to_thread(self.encode, req)
        else:
            prompt_ids = self.encode(req)
        room = self.max_context - len(prompt_ids)
        if room < 1:
            raise ContextLengthExceeded(
                f"Prompt is {len(prompt_ids)} tokens; this model's context window is {self.max_context} tokens",
                param="messages",
            )
        cap = self.settings.max_tokens_cap
        max_new = min(req.max_tokens or cap, cap, room)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
        sampler = Sampler(req.temperature, req.top_p, req.presence_penalty, req.frequency_penalty, req.seed, grammar=matcher)
        table = None
        if req.logprobs:
            sampler.top_logprobs = req.top_logprobs
            table = self._token_bytes()
        deltas = TokenDeltas(
            self.loaded.tokenizer, req.stop, harmony=self.harmony, tools=bool(req.tools), parallel=req.parallel_tool_calls,
            logprobs=table,
        )

        def on_token(token: int) -> bool:
            # The engine chose `token` with this sampler, which kept its logprobs (sampling.py): one record per choice.
            delta = deltas.push(token, sampler.records.popleft() if table is not None and sampler.records else None)
            if delta is not None:
                put(delta)
            return deltas.stopped

        def on_finish(reason: str, n: int) -> None:
            if reason != "cancelled":
                delta = deltas.finish()
                if delta is not None:
                    put(delta)
            put(_Done(reason, n))

        seq = Sequence(
            prompt_ids=prompt_ids,
            max_new_tokens=max_new,
            sampler=sampler,
            on_token=on_token,
            on_finish=on_finish,
            on_error=put,
        )
        self.engine.submit(seq)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, Delta):
                    yield item
                elif isinstance(item, _Done):
                    reason = "stop" if item.reason == "cancelled" else item.reason
                    if reason == "stop" and deltas.called:
                        reason = "tool_calls"
                    yield Delta(
                        finish_reason=reason, prompt_tokens=len(prompt_ids), completion_tokens=item.completion_tokens,
                        logprobs=[] if req.logprobs else None,
                    )
                    return
                else:
                    log.error("generation failed: %r", item)
                    raise GenerationFailed("Generation failed")
        finally:
            # A client that went away (or any early close) stops its row at the next step.
            seq.cancelled.set()
            self.engine.wake()


def _load(settings: Settings, progress: LoadProgress, lean: bool):
    """load_model on a worker thread, which then drops the OpenMP pool the load started (see openmp.py)."""
    from gptoss_space.backends.local.loading import load_model

    try:
        return load_model(settings, progress, lean=lean)
    finally:
        release_pool()
