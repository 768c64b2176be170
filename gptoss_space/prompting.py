"""The system prompt every request gets: the current UTC date and time, then the base or client prompt."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from gptoss_space.protocol.request import ChatMessage


@dataclass
class PromptOptions:
    """How to compose the system message; the API uses the settings, the page its own switches."""

    system_prompt: str = ""
    inject_system_prompt: bool = True
    inject_datetime: bool = True


def datetime_line(now: datetime) -> str:
    return f"Current date and time: {now.strftime('%A, %d %B %Y, %H:%M')} UTC."


def utc_now() -> datetime:
    return datetime.now(UTC)


def _message(m: ChatMessage) -> dict:
    """{"role", "content"}, plus an assistant turn's "tool_calls" and a tool message's "tool_call_id"."""
    out: dict = {"role": m.normalized_role, "content": m.text()}
    if m.tool_calls:
        out["tool_calls"] = [call.as_dict() for call in m.tool_calls]
        # The reasoning that led to the calls: harmony keeps it across tool calls (other formats may ignore it).
        if reasoning := m.reasoning or m.reasoning_content:
            out["reasoning"] = reasoning
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    return out


def compose_messages(
    messages: list[ChatMessage], options: PromptOptions, now: datetime, *, date_in_text: bool = True
) -> list[dict]:
    """Plain {"role", "content"} dicts (tool_calls / tool_call_id kept) with the composed system message first.

    The date line is prepended to the client's own system message when it sent one, otherwise
    to the base system prompt. `date_in_text=False` leaves the date to formats that carry it
    themselves (harmony's "Current date:").
    """
    out = [_message(m) for m in messages]
    client_system = out[0]["content"] if out and out[0]["role"] == "system" else None
    parts = []
    if options.inject_datetime and date_in_text:
        parts.append(datetime_line(now))
    if client_system is not None:
        parts.append(client_system)
    elif options.inject_system_prompt and options.system_prompt:
        parts.append(options.system_prompt)
    if client_system is not None:
        out = out[1:]
    if parts:
        out.insert(0, {"role": "system", "content": "\n\n".join(parts)})
    return out
