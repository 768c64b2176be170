"""Responses API input items (messages, function calls and their outputs, reasoning) as chat messages.

Also the helpers that make a refusal name the Responses field, shared with protocol/responses.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from gptoss_space.errors import InvalidRequest

STATELESS = "this server keeps no responses (no server-side state): send the whole conversation in 'input'"
_TEXT_PARTS = {"input_text", "output_text", "text"}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class MessageItem(StrictModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[dict]


class FunctionCallItem(StrictModel):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(StrictModel):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[dict]


class ReasoningItem(StrictModel):
    type: Literal["reasoning"]
    summary: list[dict] = []
    content: list[dict] | None = None


ITEMS: dict[str, type[StrictModel]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


# -- errors that name the Responses field ------------------------------------------------------------

_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or any(c in str(part) for c in "[(-"):
            continue  # a union branch's tag, not a field
        else:
            out += ("." if out else "") + str(part)
    return out


def validate_as(model: type[StrictModel], data: Any, where: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        # A union reports one error per branch; the branch that got furthest names the field best.
        err = max(e.errors(include_url=False), key=lambda x: len(_path(x["loc"])))
        inner = _path(err["loc"])
        name = where + ("." if where and inner and not inner.startswith("[") else "") + inner
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid '{name or 'body'}': {msg}", param=name or None) from None


def refuse(name: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{name}': {why}", param=name)


@dataclass
class Origin:
    """Where one chat message came from: its Responses path, its fields' names there, and its tool calls' items."""

    path: str
    fields: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)


def _text_parts(parts: list, where: str) -> list[dict]:
    out = []
    for j, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS:
            text = part.get("text")
        elif kind == "refusal":
            text = part.get("refusal")
        else:
            raise refuse(f"{where}[{j}].type", "only text parts (input_text, output_text) are supported")
        if not isinstance(text, str):
            raise refuse(f"{where}[{j}].{'refusal' if kind == 'refusal' else 'text'}", "Input should be a valid string")
        out.append({"type": "text", "text": text})
    return out


def input_messages(items: list, origins: list[Origin]) -> list[dict]:
    messages: list[dict] = []
    reasoning = ""  # an earlier turn's reasoning, for the assistant turn that follows it
    for i, raw in enumerate(items):
        where = f"input[{i}]"
        kind = raw.get("type", "message" if "role" in raw else None) if isinstance(raw, dict) else None
        if kind == "item_reference":
            raise refuse(f"{where}.type", STATELESS)
        if kind not in ITEMS:
            if not isinstance(raw, dict):
                raise refuse(where, "Input should be a valid dictionary")
            raise refuse(f"{where}.type" if "type" in raw else f"{where}.role",
                          "expected a message (role, content), function_call, function_call_output or reasoning item")
        item = validate_as(ITEMS[kind], raw, where)
        last = messages[-1] if messages else None
        if isinstance(item, ReasoningItem):
            parts = item.content if item.content is not None else item.summary
            reasoning += "".join(p.get("text", "") for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
            continue
        if isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            if last is not None and last["role"] == "assistant" and origins[-1].path.startswith("input["):
                last.setdefault("tool_calls", []).append(call)  # one assistant turn: its text and its calls
                origins[-1].calls.append(where)
                continue
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            origin = Origin(where, {"content": "arguments"}, [where])
        elif isinstance(item, FunctionCallOutputItem):
            output = item.output if isinstance(item.output, str) else _text_parts(item.output, f"{where}.output")
            message = {"role": "tool", "tool_call_id": item.call_id, "content": output}
            origin = Origin(where, {"content": "output", "tool_call_id": "call_id", "role": "type"})
        else:
            content = item.content if isinstance(item.content, str) else _text_parts(item.content, f"{where}.content")
            message = {"role": item.role, "content": content}
            origin = Origin(where, {"content": "content", "role": "role"})
        if message["role"] == "assistant" and reasoning:
            message["reasoning"], reasoning = reasoning, ""
        messages.append(message)
        origins.append(origin)
    return messages
