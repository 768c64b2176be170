"""The Chat tab and the /chat Gradio endpoint: both stream through ChatService, like /api."""

# No `from __future__ import annotations`: gr.api reads these functions' hints at runtime.
import logging
import math
import time
from collections.abc import AsyncIterator

import gradio as gr
from pydantic import ValidationError

from gptoss_space.errors import (
    APIError,
    ContextLengthExceeded,
    GenerationTimeout,
    InvalidRequest,
    ModelLoading,
    Overloaded,
    RateLimited,
)
from gptoss_space.protocol.request import ChatMessage
from gptoss_space.ratelimit.client_ip import TrustedProxies, client_of
from gptoss_space.ui.errors import record
from gptoss_space.ui.parameters import DEFAULT_EFFORT, ChatParams, ParameterControls
from gptoss_space.ui.render import Turn, notice, render

log = logging.getLogger(__name__)

EXAMPLES = [
    "Hello! Who created you?",
    "Tell me a short story about a brave little robot.",
    "Explain recursion to a ten-year-old.",
    "Write a haiku about the sea.",
]


def _text(content) -> str:
    """The text of a Chatbot message's content: a string, a text part, or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text", "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(_text(c) for c in content)
    return ""


def history_messages(history: list | None, message: str) -> list[ChatMessage]:
    """The conversation as the model sees it; thoughts and status notices (titled messages) are not turns."""
    msgs = []
    for item in history or []:
        if not isinstance(item, dict):
            continue
        role, meta = item.get("role"), item.get("metadata") or {}
        if role not in ("user", "assistant") or meta.get("title"):
            continue
        text = _text(item.get("content"))
        if text:
            msgs.append(ChatMessage(role=role, content=text))
    msgs.append(ChatMessage(role="user", content=message))
    return msgs


def _wait(seconds: float | None) -> str:
    return "a few" if seconds is None else str(max(1, math.ceil(seconds)))


def friendly(err: APIError) -> str:
    """A message for a person, never a stack trace."""
    if isinstance(err, RateLimited):
        return f"Rate limit reached: you are sending messages faster than this Space allows. Try again in {_wait(err.retry_after)} s."
    if isinstance(err, ModelLoading):
        return f"The model is still loading. Try again in {_wait(err.retry_after)} s."
    if isinstance(err, Overloaded):
        return f"The server is busy right now. Try again in {_wait(err.retry_after)} s."
    if isinstance(err, ContextLengthExceeded):
        return "This conversation is too long for the model: clear the chat or undo a few turns."
    if isinstance(err, GenerationTimeout):
        return f"{err.message}. Try a shorter answer (Parameters → Max tokens)."
    if err.status < 500:
        return err.message
    return "The model could not answer this time. Please try again."


class ChatRunner:
    """One chat turn through the service: the gate (queue, rate limit), the prompt options, the stream."""

    def __init__(self, service, settings):
        self.service, self.settings = service, settings
        self.trusted = TrustedProxies.from_settings(settings)

    def client_of(self, request: gr.Request | None) -> str:
        if request is None:
            return "gradio"
        return client_of(request, self.trusted)

    async def turns(self, message: str, history: list | None, params: ChatParams, request) -> AsyncIterator[Turn]:
        try:
            chat = params.chat_request(history_messages(history, message))
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            field = ".".join(str(p) for p in err["loc"]) or "request"
            raise InvalidRequest(f"Invalid '{field}': {err['msg']}") from None
        turn = Turn()
        yield turn
        async with self.service.session(chat, self.client_of(request), params.prompt_options()) as generation:
            turn.status = "generating"
            yield turn
            started = time.monotonic()
            async for d in generation:
                if (d.content or d.tool_calls) and turn.reasoning and turn.thinking_s is None:
                    turn.thinking_s = time.monotonic() - started
                turn.reasoning += d.reasoning
                turn.content += d.content
                turn.tool_calls += d.tool_calls
                turn.finish_reason = d.finish_reason or turn.finish_reason
                if d.content or d.reasoning or d.tool_calls:
                    yield turn
                    if unread_updates(request) > MAX_UNREAD:
                        # A call posted and never read (/gradio_api/call/... without the GET): stop
                        # generating for nobody; its slot and batch row go to clients that read.
                        log.info("page call not read (%d updates waiting): generation cancelled", MAX_UNREAD)
                        return
        turn.status = "done"
        yield turn


# Updates Gradio may hold unread for one call before its generation is cancelled. A reader takes them as
# they come (the browser's stream, or GET /gradio_api/call/chat/{event_id}); only a call nobody reads, or
# whose socket stopped taking data, lets them pile up.
MAX_UNREAD = 256


def unread_updates(request) -> int:
    """How many of this call's updates wait in Gradio's queue unread (0 where that cannot be told)."""
    try:
        waiting = request.request.app.get_blocks()._queue.pending_messages_per_session.get(request.session_hash)
    except AttributeError:  # no Gradio request (a direct call), or a Gradio without these internals
        return 0
    return waiting.qsize() if waiting is not None else 0


def build_chat(service, settings, controls: ParameterControls) -> gr.ChatInterface:
    """The chat tab's ChatInterface (render into the current context) and the public /chat endpoint."""
    runner = ChatRunner(service, settings)

    async def respond(message: str, history: list, temperature, top_p, max_tokens, system_prompt,
                      inject_datetime, effort, request: gr.Request):
        if isinstance(message, str) and not message.strip():
            gr.Info("Type a message first.")
            return
        shown: list = []
        try:
            params = ChatParams.from_values(temperature, top_p, max_tokens, system_prompt, inject_datetime, effort)
            if params.max_tokens == -1:
                cut = f"✂️ Cut at this server's limit of {settings.max_tokens_cap} tokens."
            else:
                cut = f"✂️ Cut at your max tokens ({params.max_tokens}): raise it in Parameters."
            async for turn in runner.turns(message, history, params, request):
                shown = render(turn, cut)
                yield shown
        except APIError as e:
            text = friendly(e)
            record(request, e)
            log.info("chat turn refused: %s (%d)", type(e).__name__, e.status)
            gr.Warning(text)
            yield [m for m in shown if m.metadata.get("status") != "pending"] + [notice(f"⚠️ {text}")]
        except Exception:
            log.exception("chat turn failed")
            gr.Warning("Something went wrong on the server. Please try again.")
            yield [m for m in shown if m.metadata.get("status") != "pending"] + [notice("⚠️ Something went wrong.")]

    chatbot = gr.Chatbot(
        elem_id="gs-chatbot",
        height="60vh",
        min_height=320,
        show_label=False,
        buttons=["copy", "copy_all"],
        feedback_options=None,
        placeholder="<div style='text-align:center;opacity:.75'>Ask anything. Answers stream in as they are written.</div>",
    )
    ci = gr.ChatInterface(
        respond,
        chatbot=chatbot,
        textbox=gr.Textbox(
            placeholder="Type a message and press Enter…", show_label=False, scale=7,
            submit_btn="Send", stop_btn="Stop", elem_id="gs-input", autofocus=False,
        ),
        additional_inputs=controls.inputs(),
        examples=[[e] for e in EXAMPLES],
        cache_examples=False,  # on a Space the default would run them at startup, before the model loads
        analytics_enabled=False,
        concurrency_limit=settings.page_concurrency,  # the service's gate queues and rate-limits; this bounds Gradio's side
        show_progress="minimal",
        fill_height=False,
        api_visibility="private",  # the documented endpoint is /chat below
        api_name="chat_ui",
    )

    d = ChatParams.defaults(settings)

    async def chat(
        message: str,
        history: list[dict] | None = None,
        temperature: float = d.temperature,
        top_p: float = d.top_p,
        max_tokens: int = -1,
        system_prompt: str = d.system_prompt,
        inject_datetime: bool = d.inject_datetime,
        reasoning_effort: str = DEFAULT_EFFORT,
        request: gr.Request = None,
    ) -> str:
        """Chat with the model. Streams the answer as it grows; the final value is the whole answer."""
        try:
            params = ChatParams.from_values(temperature, top_p, max_tokens, system_prompt, inject_datetime, reasoning_effort)
            async for turn in runner.turns(message, history, params, request):
                if turn.content:
                    yield turn.content
        except APIError as e:
            record(request, e)  # a direct call (/gradio_api/run/chat) answers with its status, not 500
            raise gr.Error(friendly(e), print_exception=False) from None
        except Exception:
            log.exception("chat endpoint failed")
            raise gr.Error("Something went wrong on the server. Please try again.", print_exception=False) from None
        if not turn.content:
            yield ""

    gr.api(chat, api_name="chat", concurrency_limit=settings.page_concurrency)
    return ci
