"""ChatService: one path for the API and the page: bounds, gate, system prompt, backend, usage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gptoss_space.backends.base import Backend, Delta, GenerationRequest
from gptoss_space.errors import GenerationTimeout, InvalidRequest, ModelLoading
from gptoss_space.prompting import PromptOptions, compose_messages, utc_now
from gptoss_space.protocol.request import ChatRequest
from gptoss_space.protocol.tools import tool_text_size
from gptoss_space.ratelimit.gate import Ticket

log = logging.getLogger(__name__)


@dataclass
class Usage:
    requests: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


# Below this, sampling is greedy in all but name; logits / 1e-300 overflow float32 to inf and the NaN
# probabilities failed the engine step, and with it every stream sharing the batch.
MIN_SAMPLING_TEMPERATURE = 1e-4


def _temperature(t: float) -> float:
    return 0.0 if t < MIN_SAMPLING_TEMPERATURE else t


class Generation:
    """One admitted request's answer: its deltas and its ticket. aclose() (or leaving `async with`) releases both.

    It is the one place a ticket is released: whatever ends the answer (the last delta, an error, a client
    that leaves, the shutdown's grace period) ends in aclose(), and a second aclose() does nothing.
    """

    def __init__(self, deltas: AsyncIterator[Delta], ticket: Ticket):
        self._deltas = deltas
        self.ticket = ticket
        self._closed = False

    @property
    def headers(self) -> dict[str, str]:
        """The rate-limit headers of the answer."""
        return self.ticket.headers

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> Delta:
        return await anext(self._deltas)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._deltas.aclose()  # cancels generation if it still runs
        finally:
            self.ticket.release()

    async def __aenter__(self) -> Generation:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()


class ChatService:
    def __init__(self, settings, backend: Backend, gate):
        self.settings = settings
        self.backend = backend
        self.gate = gate
        self.usage = Usage()

    @property
    def model_name(self) -> str:
        return self.settings.public_model_name(self.backend.model_id)

    def default_options(self) -> PromptOptions:
        s = self.settings
        return PromptOptions(s.system_prompt, s.inject_system_prompt, s.inject_datetime)

    def build(self, chat: ChatRequest, options: PromptOptions | None = None) -> GenerationRequest:
        """The bounds of every entry (API and page alike), checked before the request queues (so 400s cost nothing).

        `options` are the caller's prompt options (the page's system prompt); None: the server's own.
        """
        s = self.settings
        if len(chat.messages) > s.max_messages:
            raise InvalidRequest(f"Invalid 'messages': at most {s.max_messages} messages are allowed", param="messages")
        # Every text the caller sent counts, whichever entry it came through: the page's system prompt too
        # (5 MB of it through /gradio_api/call/chat stalled the server 4.7 s before this counted it).
        chars = sum(len(m.text()) + len(m.reasoning or "") + len(m.reasoning_content or "") for m in chat.messages)
        chars += sum(len(stop) for stop in chat.stop_list) + tool_text_size(chat)
        if options is not None:
            chars += len(options.system_prompt)
        if chars > s.max_total_chars:
            raise InvalidRequest(
                f"Invalid 'messages': {chars} characters of content; the limit is {s.max_total_chars}", param="messages"
            )
        wanted = chat.requested_max_tokens
        if wanted > s.max_tokens_cap:
            field = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
            raise InvalidRequest(
                f"Invalid '{field}': {wanted} is above this server's cap of {s.max_tokens_cap} (use -1 for the most allowed)",
                param=field,
            )
        options = options or self.default_options()
        now = utc_now()
        return GenerationRequest(
            messages=compose_messages(chat.messages, options, now, date_in_text=not self.backend.native_date),
            max_tokens=None if wanted == -1 else wanted,
            temperature=_temperature(s.default_temperature if chat.temperature is None else chat.temperature),
            top_p=s.default_top_p if chat.top_p is None else chat.top_p,
            stop=chat.stop_list,
            seed=chat.seed,
            presence_penalty=chat.presence_penalty or 0.0,
            frequency_penalty=chat.frequency_penalty or 0.0,
            reasoning_effort=chat.effort,
            now=now,
            inject_datetime=options.inject_datetime,
            tools=chat.tool_dicts,
            tool_choice=chat.tool_choice if chat.tool_dicts else None,
            parallel_tool_calls=chat.parallel_tool_calls is not False,
            # Compiled (and refused with a 400) here, before the request queues; only a local backend enforces it.
            grammar=chat.grammar() if self.backend.kind == "local" else None,
            response_format=chat.response_format_sent,
            logprobs=bool(chat.logprobs),
            top_logprobs=chat.top_logprobs or 0,
        )

    async def admit(self, client: str) -> Ticket:
        """Wait for this client's turn (FIFO); raises RateLimited / Overloaded / ModelLoading."""
        self._check_ready()
        return await self.gate.acquire(client)  # starts at once when it can

    def admit_now(self, client: str) -> Ticket | None:
        """This client's turn if it may start at once (the common case), else None: then `admit` waits for it."""
        self._check_ready()
        return self.gate.try_acquire(client)

    def _check_ready(self) -> None:
        if not self.backend.ready:
            raise ModelLoading("Model is loading, try again shortly", retry_after=5)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        """The backend's deltas under the wall-clock limit; counts usage. Closing it cancels generation."""
        self.usage.requests += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.request_timeout_s
        stream = self.backend.stream(req)
        outcome, last, answer = "failed", Delta(), []
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        delta = await anext(stream)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise GenerationTimeout(
                        f"Generation took longer than the {self.settings.request_timeout_s:g} s limit"
                    ) from None
                if self.settings.log_content:
                    answer.append(delta.content)
                if delta.finish_reason:
                    outcome, last = delta.finish_reason, delta
                    self.usage.completed += 1
                    self.usage.prompt_tokens += delta.prompt_tokens or 0
                    self.usage.completion_tokens += delta.completion_tokens or 0
                yield delta
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            self.usage.cancelled += 1
            raise
        except Exception as e:
            outcome = type(e).__name__
            self.usage.failed += 1
            raise
        finally:
            await stream.aclose()
            # Sizes and timings only; prompts and answers only when GPTOSS_LOG_CONTENT asks.
            log.info(
                "generation %s: %s prompt + %s completion tokens in %.2f s",
                outcome, last.prompt_tokens, last.completion_tokens, loop.time() - started,
            )
            if self.settings.log_content:
                log.info("prompt: %r answer: %r", req.messages[-1]["content"] if req.messages else "", "".join(answer))

    def start(self, req: GenerationRequest, ticket: Ticket) -> Generation:
        """The admitted request's generation: the handle every caller reads and closes."""
        return Generation(self.generate(req), ticket)

    @asynccontextmanager
    async def session(self, chat: ChatRequest, client: str, options: PromptOptions | None = None):
        """For callers that wait in line inline (the page): bounds, admission, the generation, closed on exit."""
        req = self.build(chat, options)
        generation = self.start(req, await self.admit(client))
        async with generation:
            yield generation

    def stats(self) -> dict:
        u = self.usage
        return {
            "requests": u.requests,
            "completed": u.completed,
            "failed": u.failed,
            "cancelled": u.cancelled,
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
        }
