"""One chat answer as the Chatbot shows it: a status notice, the thinking, the answer, any tool calls.

Thinking and tool calls are titled messages (Gradio draws them as collapsible blocks, open while
pending, closed once done); a titled message is never sent back to the model as a turn.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import gradio as gr

from gptoss_space.protocol.answer import join_tool_calls

QUEUED = "⏳ Queued: waiting for a free slot…"
GENERATING = "⚙️ Generating…"
THINKING = "💭 Thinking"
TOOL_CALL = "🛠️ Tool call"
TITLE_ARGS = 80  # characters of arguments shown in a call's title; the block holds them all


@dataclass
class Turn:
    """One answer as it grows: status is queued, generating or done."""

    status: str = "queued"
    content: str = ""
    reasoning: str = ""
    thinking_s: float | None = None
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # the streamed pieces (Delta.tool_calls), in order


def notice(title: str, *, pending: bool = False) -> gr.ChatMessage:
    """A status line in the chat; titled, so it is never sent back to the model as a turn."""
    meta = {"title": title, "status": "pending" if pending else "done"}
    return gr.ChatMessage(role="assistant", content="", metadata=meta)


def call_title(name: str, arguments: str) -> str:
    """`🛠️ Tool call: name(arguments)`, the arguments compacted and cut to TITLE_ARGS characters."""
    args = " ".join(arguments.split())
    if len(args) > TITLE_ARGS:
        args = args[: TITLE_ARGS - 1] + "…"
    return f"{TOOL_CALL}: {name or '?'}({args})"


def call_body(arguments: str) -> str:
    """The arguments in a fenced block: indented JSON once they parse, else as written so far."""
    try:
        text, lang = json.dumps(json.loads(arguments), indent=2, ensure_ascii=False), "json"
    except ValueError:
        text, lang = arguments, ""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"{fence}{lang}\n{text}\n{fence}"


def tool_call_messages(turn: Turn) -> list[gr.ChatMessage]:
    """One collapsible message per call the model made, open while the turn is still being written."""
    status = "done" if turn.status == "done" else "pending"
    return [
        gr.ChatMessage(
            role="assistant",
            content=call_body(call["function"]["arguments"]),
            metadata={"title": call_title(call["function"]["name"], call["function"]["arguments"]), "status": status},
        )
        for call in join_tool_calls(turn.tool_calls)
    ]


def render(turn: Turn, cut_note: str = "") -> list[gr.ChatMessage]:
    """A turn as Chatbot messages: a status notice, or the thinking (collapsed when done), the answer and the calls."""
    if turn.status == "queued":
        return [notice(QUEUED, pending=True)]
    out = []
    if turn.reasoning:
        done = bool(turn.content or turn.tool_calls) or turn.status == "done"
        meta = {"title": THINKING, "status": "done" if done else "pending"}
        if turn.thinking_s is not None:
            meta["duration"] = round(turn.thinking_s, 1)
        out.append(gr.ChatMessage(role="assistant", content=turn.reasoning, metadata=meta))
    if turn.content:
        out.append(gr.ChatMessage(role="assistant", content=turn.content))
    calls = tool_call_messages(turn)
    out += calls
    if not turn.content and not calls:
        if turn.status != "done":
            if not turn.reasoning:
                out.append(notice(GENERATING, pending=True))
        elif not turn.reasoning:
            out.append(notice("The model returned an empty answer."))
    if turn.status == "done" and turn.finish_reason == "length" and cut_note:
        out.append(notice(cut_note))
    return out
