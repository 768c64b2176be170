"""gpt-oss (harmony format) specifics: prompt rendering, stop tokens and a streaming channel parser."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")
# Generation ends at <|return|> (answer done) or <|call|> (a tool call). <|end|> only closes one
# message (the analysis is followed by more), so it is not a stop token; see final_done instead.
HARMONY_STOP_STRINGS = ("<|return|>", "<|call|>")

# Every special token of the gpt-oss vocabulary has this shape (<|start|>, <|reserved_200013|>, ...).
_MARKER = re.compile(r"<\|([a-z0-9_]{1,32})\|>")
# A tail that may still grow into a marker: "<", "<|", "<|chan", "<|channel|".
_PARTIAL = re.compile(r"<(?:\|[a-z0-9_]{0,32}\|?)?\Z")
_TERMINATORS = frozenset({"end", "return", "call"})
_TEXT, _HEADER, _BODY = "text", "header", "body"


def is_harmony_model(config: Any) -> bool:
    """True for gpt-oss checkpoints (a transformers config object or its dict)."""
    if isinstance(config, Mapping):
        return config.get("model_type") == "gpt_oss"
    return getattr(config, "model_type", None) == "gpt_oss"


def harmony_stop_token_ids(tokenizer: Any) -> list[int]:
    """Ids of <|return|> and <|call|> in this tokenizer (those it knows)."""
    ids = []
    for marker in HARMONY_STOP_STRINGS:
        tid = tokenizer.convert_tokens_to_ids(marker)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
            ids.append(tid)
    return ids


class HarmonyStreamParser:
    """Splits streamed harmony text into (reasoning, content) deltas, never passing markup through.

    Routing: `analysis` -> reasoning; `final` -> content; `commentary` -> content when it is a
    preamble (harmony shows those to the user), reasoning when it is a tool call (a recipient
    `to=...` in the header: arguments are not an answer, and this server offers no tools);
    text outside any message, or in a message without a channel, -> content, so a model that
    ignores harmony still answers. Header text (role, channel, recipient, `<|constrain|>json`)
    is never emitted. Any `<|name|>` marker is dropped; an unknown one (`<|endoftext|>`)
    changes nothing else. A tail that could still become a marker is held back until the
    next feed() shows whether it is one, or until finish() releases it as text.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._state = _TEXT
        self._header = ""  # all header text seen since <|start|> / <|channel|>
        self._channel_text: str | None = None  # text after <|channel|>, up to the next marker
        self._collecting_channel = False
        self._route = "content"
        self.channel: str | None = None  # channel of the message being read
        self.final_done = False  # a final-channel message was closed: the answer is complete

    def feed(self, text: str) -> tuple[str, str]:
        """Returns (reasoning_delta, content_delta) for the newly decoded text."""
        self._buf += text
        out = {"reasoning": [], "content": []}
        pos = 0
        for m in _MARKER.finditer(self._buf):
            self._text(self._buf[pos : m.start()], out)
            self._marker(m.group(1))
            pos = m.end()
        rest = self._buf[pos:]
        cut = rest.rfind("<")
        if cut >= 0 and _PARTIAL.match(rest, cut):
            self._text(rest[:cut], out)
            self._buf = rest[cut:]
        else:
            self._text(rest, out)
            self._buf = ""
        return "".join(out["reasoning"]), "".join(out["content"])

    def finish(self) -> tuple[str, str]:
        """Releases a held tail (it never became a marker) and resets for the next stream."""
        out = {"reasoning": [], "content": []}
        self._text(self._buf, out)
        self._buf = ""
        self._state, self._header, self._channel_text, self._collecting_channel = _TEXT, "", None, False
        return "".join(out["reasoning"]), "".join(out["content"])

    # -- internals ------------------------------------------------------------------------------

    def _text(self, text: str, out: dict[str, list[str]]) -> None:
        if not text:
            return
        if self._state == _HEADER:
            self._header += text
            if self._collecting_channel:
                self._channel_text = (self._channel_text or "") + text
        elif self._state == _BODY:
            out[self._route].append(text)
        else:
            out["content"].append(text)

    def _marker(self, name: str) -> None:
        self._collecting_channel = False
        if name == "start":
            self._open_header()
        elif name == "channel":
            if self._state != _HEADER:
                self._open_header()  # generation may begin right after the prompt's <|start|>assistant
            self._channel_text = ""
            self._collecting_channel = True
            self._header += " "
        elif name == "constrain":
            if self._state == _HEADER:
                self._header += " "
        elif name == "message":
            if self._state == _HEADER:
                self._open_body()
            elif self._state == _TEXT:
                self.channel, self._route, self._state = None, "content", _BODY
        elif name in _TERMINATORS:
            if self._state == _BODY and self.channel == "final" and name != "call":
                self.final_done = True
            self._state = _TEXT
        else:
            log.debug("dropped unknown harmony marker <|%s|>", name)

    def _open_header(self) -> None:
        self._state, self._header, self._channel_text = _HEADER, "", None

    def _open_body(self) -> None:
        words = (self._channel_text or "").split()
        self.channel = words[0] if words else None
        tool_call = "to=" in self._header
        if self.channel == "analysis" or (self.channel == "commentary" and tool_call):
            self._route = "reasoning"
        else:
            self._route = "content"
        self._state = _BODY


def parse_harmony(text: str) -> tuple[str, str]:
    """(reasoning, content) of a whole decoded completion."""
    parser = HarmonyStreamParser()
    r1, c1 = parser.feed(text)
    r2, c2 = parser.finish()
    return r1 + r2, c1 + c2


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


def escape_markup(text: str) -> str:
    """Breaks `<|name|>` in client text so the tokenizer cannot read it as a special token.

    Without this a user message could close its own turn and forge a system or developer
    message. A zero-width space after "<" keeps the text readable and the model unconfused.
    """
    return _MARKER.sub(lambda m: "<\u200b|" + m.group(1) + "|>", text)


def render_harmony_prompt(
    messages: Iterable[Any],
    *,
    reasoning_effort: str | None = "medium",
    now: datetime | None = None,
    model_identity: str = DEFAULT_MODEL_IDENTITY,
    escape: bool = True,
) -> str:
    """The prompt text gpt-oss's own chat template renders, ending with `<|start|>assistant`.

    Matches the openai/gpt-oss chat template with add_generation_prompt=True: a system message
    (identity, knowledge cutoff, `Current date:` from `now`, reasoning effort, channels), then
    the system/developer instructions as a developer message, then the turns. Earlier assistant
    turns keep only their final answer: harmony drops past analysis (a `reasoning` field on a
    message is ignored). Differences, on purpose: `now=None` leaves the date line out (as the
    harmony library does without a conversation date) instead of reading the clock; every
    system/developer message is kept (joined by a blank line), not just the first; client text
    is escaped (see escape_markup) unless escape=False.
    """
    effort = (reasoning_effort or "medium").lower()
    if effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning_effort must be one of {REASONING_EFFORTS}, got {reasoning_effort!r}")
    clean = escape_markup if escape else (lambda s: s)

    system = model_identity + "\n" + f"Knowledge cutoff: {KNOWLEDGE_CUTOFF}\n"
    if now is not None:
        system += f"Current date: {now.strftime('%Y-%m-%d')}\n"
    system += f"\nReasoning: {effort}\n\n# Valid channels: analysis, commentary, final. Channel must be included for every message."
    out = [f"<|start|>system<|message|>{system}<|end|>"]

    instructions: list[str] = []
    turns: list[str] = []
    for message in messages:
        role = _field(message, "role")
        text = clean(_content_text(_field(message, "content")))
        if role in ("system", "developer"):
            instructions.append(text)
        elif role == "user":
            turns.append(f"<|start|>user<|message|>{text}<|end|>")
        elif role == "assistant":
            turns.append(f"<|start|>assistant<|channel|>final<|message|>{text}<|end|>")
        else:
            raise ValueError(f"unsupported role for a harmony prompt: {role!r}")
    developer = "\n\n".join(t for t in instructions if t)
    if developer:
        out.append(f"<|start|>developer<|message|># Instructions\n\n{developer}\n\n<|end|>")
    out.extend(turns)
    out.append("<|start|>assistant")
    return "".join(out)
