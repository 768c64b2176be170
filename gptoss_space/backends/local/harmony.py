"""gpt-oss (harmony format) on token ids through openai-harmony: prompt rendering and a streaming channel parser.

The prompt is rendered straight to ids and the output parsed id by id, so only the real special
token ids open, close or route a message: a user who writes `<|start|>system<|message|>` or a
model that writes `<|end|>` inside its analysis produces ordinary text tokens, never markup.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

from gptoss_space.backends.local.textstream import IncrementalDecoder

log = logging.getLogger(__name__)

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")


@lru_cache(maxsize=1)
def harmony_encoding():
    """The o200k_harmony encoding. Its vocabulary file comes from TIKTOKEN_ENCODINGS_BASE when that is
    set (offline), else it is downloaded once into harmony's cache (~4 MB; on a Space at first start)."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


# -- prompt rendering ---------------------------------------------------------------------------


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:  # OpenAI content parts: [{"type": "text", "text": ...}]
        parts.append(part.get("text", "") if isinstance(part, Mapping) else getattr(part, "text", ""))
    return "".join(parts)


def _field(message: Any, name: str) -> Any:
    return message.get(name) if isinstance(message, Mapping) else getattr(message, name, None)


def build_conversation(
    messages: Iterable[Any],
    *,
    reasoning_effort: str | None = "medium",
    now: datetime | None = None,
    model_identity: str = DEFAULT_MODEL_IDENTITY,
    tools: list[dict] | None = None,
):
    """The harmony Conversation for chat messages: system content, developer instructions, the turns.

    The system message carries the identity, knowledge cutoff, `Current date:` from `now` (left
    out when None, as harmony does without a conversation date) and the reasoning effort; every
    system/developer message becomes the developer instructions (joined by a blank line); earlier
    assistant turns keep only their final answer (harmony drops past analysis, so a `reasoning`
    field on a message is ignored), except a turn that called tools: its reasoning is kept as
    analysis (harmony keeps the chain of thought across tool calls), its content as a commentary
    preamble, and each call is a commentary message `to=functions.NAME` `<|constrain|>json`. A
    tool message is a message from `functions.NAME` (the name of the call it answers) to the
    assistant on the commentary channel. `tools` (OpenAI function tools) go into the developer
    message as the `functions` namespace.
    """
    from openai_harmony import (
        Author,
        Conversation,
        DeveloperContent,
        Message,
        ReasoningEffort,
        Role,
        SystemContent,
        ToolDescription,
    )

    effort = (reasoning_effort or "medium").lower()
    if effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}")
    system = (
        SystemContent.new()
        .with_model_identity(model_identity)
        .with_knowledge_cutoff(KNOWLEDGE_CUTOFF)
        .with_reasoning_effort(ReasoningEffort(effort.capitalize()))
    )
    if now is not None:
        system = system.with_conversation_start_date(now.strftime("%Y-%m-%d"))

    instructions: list[str] = []
    turns = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for message in messages:
        role = _field(message, "role")
        text = _content_text(_field(message, "content"))
        calls = _field(message, "tool_calls") or []
        if role in ("system", "developer"):
            instructions.append(text)
        elif role == "user":
            turns.append(Message.from_role_and_content(Role.USER, text))
        elif role == "assistant" and calls:
            reasoning = _field(message, "reasoning")
            if reasoning:
                turns.append(Message.from_role_and_content(Role.ASSISTANT, reasoning).with_channel("analysis"))
            if text:
                turns.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary"))
            for call in calls:
                name = call["function"]["name"]
                names[call["id"]] = name
                turns.append(
                    Message.from_role_and_content(Role.ASSISTANT, call["function"]["arguments"])
                    .with_channel("commentary")
                    .with_recipient(f"functions.{name}")
                    .with_content_type("<|constrain|>json")
                )
        elif role == "assistant":
            turns.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final"))
        elif role == "tool":
            name = names.get(_field(message, "tool_call_id"), "unknown")
            author = Author.new(Role.TOOL, f"functions.{name}")
            turns.append(Message.from_author_and_content(author, text).with_recipient("assistant").with_channel("commentary"))
        else:
            raise ValueError(f"unsupported role for a harmony prompt: {role!r}")
    out = [Message.from_role_and_content(Role.SYSTEM, system)]
    developer_text = "\n\n".join(t for t in instructions if t)
    if developer_text or tools:
        developer = DeveloperContent.new()
        if developer_text:
            developer = developer.with_instructions(developer_text)
        if tools:
            described = [
                ToolDescription.new(t["function"]["name"], t["function"].get("description") or "", _parameters(t["function"]))
                for t in tools
            ]
            developer = developer.with_function_tools(described)
        out.append(Message.from_role_and_content(Role.DEVELOPER, developer))
    return Conversation.from_messages(out + turns)


def _parameters(function: dict) -> dict | None:
    """None for a function without arguments: harmony then writes `type f = () => any;`, as gpt-oss was trained."""
    parameters = function.get("parameters")
    if not parameters or (parameters.get("type", "object") == "object" and not parameters.get("properties")
                          and set(parameters) <= {"type", "properties", "required", "additionalProperties"}):
        return None
    return parameters


def render_harmony_ids(messages: Iterable[Any], **options) -> list[int]:
    """The prompt ids, ending with `<|start|>assistant` (options: those of build_conversation)."""
    from openai_harmony import Role

    return harmony_encoding().render_conversation_for_completion(build_conversation(messages, **options), Role.ASSISTANT)


# -- output parsing -----------------------------------------------------------------------------


class _PlainText:
    """The encoding as IncrementalDecoder's tokenizer, dropping special tokens."""

    def __init__(self, encoding):
        self._encoding = encoding

    def backend_decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._encoding.decode([i for i in ids if not self._encoding.is_special_token(i)])


class HarmonyParser:
    """Generated ids -> (reasoning, content) deltas and tool call pieces, with harmony's StreamableParser.

    Routing: `analysis` -> reasoning; `final` -> content; `commentary` -> content when it is a
    preamble (harmony shows those to the user); a message to `functions.NAME` -> a tool call when
    the request offered tools (take_calls(): OpenAI's streamed pieces, the first with id and name
    once the header is read, then the arguments as they come), reasoning otherwise, as is a message
    to any other recipient (a built-in tool this server does not run); a message without a channel
    -> content. Header text (role, channel, recipient) is never emitted, nor is a special token
    met inside a message. A model that breaks the format (the parser raises) is not an error:
    the held header and everything after it are streamed as content, decoded without special
    tokens, so the user still gets the text and never markup.

    `routed` says where the last pushed id went: "content", "reasoning", or None (a header or
    special token, or no text yet); the logprobs of the "content" ids are the answer's.
    """

    routed: str | None = None

    def __init__(self, encoding=None, *, tools: bool = False, parallel: bool = True):
        from openai_harmony import Role, StreamableParser, StreamState

        self._encoding = encoding or harmony_encoding()
        self._parser = StreamableParser(self._encoding, role=Role.ASSISTANT)
        self._header_state = StreamState.HEADER
        self._content_state = StreamState.CONTENT
        self._held: list[int] = []  # ids of a header still being read: text if the format breaks
        self._plain: IncrementalDecoder | None = None
        self._tools, self._parallel = tools, parallel
        self._calls: list[dict] = []  # pieces not yet taken
        self._call_message = -1  # the index of the message the current call is
        self.calls = 0
        self.done = False  # parallel_tool_calls false and one call complete

    @property
    def called(self) -> bool:
        return self.calls > 0

    def take_calls(self) -> list[dict]:
        calls, self._calls = self._calls, []
        return calls

    def _function(self) -> str | None:
        """The function the message being read calls, when tools are offered."""
        recipient = self._parser.current_recipient
        if self._tools and recipient and recipient.startswith("functions.") and len(recipient) > len("functions."):
            return recipient[len("functions."):]
        return None

    def _route_call(self) -> None:
        """A call's first piece once its header is read; a second call ends the row without parallel calls."""
        from gptoss_space.backends.local.tool_parse import new_call_id

        parser = self._parser
        index = len(parser.messages)
        if not self._parallel and self.calls and index != self._call_message:
            self.done = True
        if parser.state is self._content_state and index != self._call_message and not self.done:
            name = self._function()
            if name is not None:
                self._call_message = index
                self.calls += 1
                piece = {"index": self.calls - 1, "id": new_call_id(), "type": "function", "function": {"name": name, "arguments": ""}}
                self._calls.append(piece)

    def push(self, token: int) -> tuple[str, str]:
        from openai_harmony import HarmonyError

        self.routed = "content"
        if self._plain is not None:
            return "", self._plain.push(token)
        parser = self._parser
        try:
            parser.process(token)
        except HarmonyError as e:
            return "", self._give_up([*self._held, token], e)
        if parser.state is self._header_state:
            self._held.append(token)
        else:
            self._held.clear()
        self._route_call()
        if parser.state is not self._content_state or self._encoding.is_special_token(token) or self.done:
            self.routed = None
            return "", ""
        delta = parser.last_content_delta
        if self._call_message == len(parser.messages) and self._function() is not None:
            self.routed = None  # a call's arguments: no answer text, no logprob entry
            if delta:
                self._calls.append({"index": self.calls - 1, "function": {"arguments": delta}})
            return "", ""
        channel = parser.current_channel
        if channel == "analysis" or (channel == "commentary" and parser.current_recipient):
            self.routed = "reasoning"
        if not delta:
            return "", ""
        return (delta, "") if self.routed == "reasoning" else ("", delta)

    def finish(self) -> tuple[str, str]:
        """The end of the output: an unfinished header is released as text."""
        from openai_harmony import HarmonyError

        if self._plain is None:
            try:
                self._parser.process_eos()
                return "", ""
            except HarmonyError as e:
                text = self._give_up(self._held, e)
                return "", text + self._plain.flush()
        return "", self._plain.flush()

    def _give_up(self, ids: list[int], error: Exception) -> str:
        log.info("model output left the harmony format (%s); streaming the rest as text", type(error).__name__)
        self._plain = IncrementalDecoder(_PlainText(self._encoding))
        return "".join(self._plain.push(t) for t in ids)
