"""The Responses API request (POST /v1/responses): its model, and its translation into a chat-completions body.

The translated body goes through the chat route's own validate_request and ChatService.build, so both
routes share one set of checks and bounds; a refusal from either is renamed to the Responses field
(`messages[3].content` -> `input[2].content`, `max_completion_tokens` -> `max_output_tokens`, ...).
There is no server-side state: `previous_response_id`, `store: true`, `background`, `conversation`
and stored prompts are refused with a 400 naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from gptoss_space.errors import InvalidRequest
from gptoss_space.protocol.request import ChatRequest, validate_request
from gptoss_space.protocol.responses_input import STATELESS, Origin, StrictModel, input_messages, refuse, validate_as


class ReasoningConfig(StrictModel):
    effort: str | None = None  # the chat validator names the allowed values
    summary: str | None = None  # accepted; gpt-oss reasoning is returned whole, never summarised


class TextConfig(StrictModel):
    format: dict | None = None
    verbosity: str | None = None  # accepted, not honoured: gpt-oss has no such control


class ResponsesRequest(StrictModel):
    """The body of POST /v1/responses. Unknown fields are ignored; ones needing server-side state are refused."""

    input: str | list[dict]
    model: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool | None = None
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None


class FunctionTool(StrictModel):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class JsonSchemaFormat(StrictModel):
    type: Literal["json_schema"]
    name: str
    schema_: dict = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


_CALL_FIELDS = {"function.name": "name", "function.arguments": "arguments", "id": "call_id"}
_TOP_LEVEL = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
}


@dataclass
class Translation:
    """A Responses request, the chat-completions body it became, and the way back for field names."""

    request: ResponsesRequest
    body: dict
    origins: list[Origin]

    def param(self, chat: str) -> str:
        """The Responses name of a chat-completions field path."""
        m = re.match(r"messages\[(\d+)\](.*)", chat)
        if m and int(m.group(1)) < len(self.origins):
            origin, rest = self.origins[int(m.group(1))], m.group(2).lstrip(".")
            if origin.path in ("input", "instructions"):
                return origin.path
            call = re.match(r"tool_calls\[(\d+)\]\.?(.*)", rest)
            if call and int(call.group(1)) < len(origin.calls):
                return _join(origin.calls[int(call.group(1))], _CALL_FIELDS.get(call.group(2), ""))
            head, _, tail = rest.partition(".")
            name = re.match(r"[a-z_]*", head).group(0)
            if name in origin.fields:
                return _join(origin.path, origin.fields[name] + head[len(name):] + ("." + tail if tail else ""))
            return origin.path
        for old, new in (("response_format.json_schema", "text.format"), ("response_format", "text.format")):
            if chat == old or chat.startswith(old + "."):
                return new + chat[len(old):]
        tool = re.match(r"(tools\[\d+\]|tool_choice)\.function(.*)", chat)
        if tool:
            return tool.group(1) + tool.group(2)
        head = re.match(r"[a-z_]+", chat)
        if head and head.group(0) in _TOP_LEVEL:
            return _TOP_LEVEL[head.group(0)] + chat[head.end():]
        return chat

    def rename(self, e: InvalidRequest) -> InvalidRequest:
        """The same refusal, naming the Responses field."""
        if not e.param:
            return e
        new = self.param(e.param)
        if new == e.param:
            return e
        return type(e)(e.message.replace(f"'{e.param}'", f"'{new}'"), param=new, retry_after=e.retry_after)


    def echo(self, temperature: float, top_p: float, effort: str | None) -> dict:
        """The request fields a Response repeats, defaults resolved (`temperature`, `top_p`: the ones used)."""
        req = self.request
        fmt = req.text.format if req.text is not None and req.text.format is not None else {"type": "text"}
        tools = [_tool_echo(t) for t in req.tools or []]
        return {
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": None,
            "metadata": req.metadata or {},
            "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": effort, "summary": req.reasoning.summary if req.reasoning else None},
            "store": False,
            "temperature": req.temperature if req.temperature is not None else temperature,
            "text": {"format": fmt},
            "tool_choice": "auto" if req.tool_choice is None else req.tool_choice,
            "tools": tools,
            "top_p": req.top_p if req.top_p is not None else top_p,
            "truncation": "disabled",
            "user": None,
        }


def _tool_echo(tool: dict) -> dict:
    return {"type": "function", "name": tool.get("name"), "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict")}


def _join(path: str, sub: str) -> str:
    return path + ("." + sub if sub and not sub.startswith("[") else sub)


def _format(fmt: dict) -> dict:
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind == "json_schema":
        f = validate_as(JsonSchemaFormat, fmt, "text.format")
        schema = {"name": f.name, "schema": f.schema_}
        schema.update({k: v for k, v in (("description", f.description), ("strict", f.strict)) if v is not None})
        return {"type": "json_schema", "json_schema": schema}
    raise refuse("text.format.type", "expected 'text', 'json_object' or 'json_schema'")


def _tools(tools: list) -> list[dict]:
    out = []
    for i, raw in enumerate(tools):
        if not isinstance(raw, dict) or raw.get("type") != "function":
            name = f"tools[{i}].type" if isinstance(raw, dict) else f"tools[{i}]"
            raise refuse(name, "only function tools ({'type': 'function', 'name', 'parameters'}) are supported")
        t = validate_as(FunctionTool, raw, f"tools[{i}]")
        fn = {"name": t.name}
        fn.update({k: v for k, v in (("description", t.description), ("parameters", t.parameters),
                                     ("strict", t.strict)) if v is not None})
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: str | dict) -> str | dict:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice.get("type") == "function":
        raise refuse("tool_choice.name", "Field required")
    raise refuse("tool_choice.type", "expected 'auto', 'none', 'required' or {'type': 'function', 'name': ...}")


def translate(data: Any) -> Translation:
    """Responses JSON -> the chat-completions body (not yet validated), or InvalidRequest naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest("Invalid request: body must be a JSON object")
    if data.get("input") is None:
        raise InvalidRequest("Invalid 'input': Field required", param="input")
    if not isinstance(data["input"], str | list):
        raise refuse("input", "expected a string or a list of input items")
    req = validate_as(ResponsesRequest, data)
    for name in ("previous_response_id", "conversation", "prompt"):
        if getattr(req, name) is not None:
            raise refuse(name, STATELESS)
    if req.store:
        raise refuse("store", "responses are not stored here: send 'store': false or leave it out")
    if req.background:
        raise refuse("background", "background responses need server-side state; this server has none")
    if req.metadata is not None and (len(req.metadata) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in req.metadata.items())):
        raise refuse("metadata", "at most 16 pairs, keys up to 64 and values up to 512 characters")
    origins: list[Origin] = []
    messages: list[dict] = []
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
        origins.append(Origin("instructions"))
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
        origins.append(Origin("input"))
    else:
        messages += input_messages(req.input, origins)
    if not any(o.path != "instructions" for o in origins):
        raise refuse("input", "must hold at least one message")
    body: dict[str, Any] = {"messages": messages, "stream": bool(req.stream)}
    scalars = (("model", req.model), ("max_completion_tokens", req.max_output_tokens), ("temperature", req.temperature),
               ("top_p", req.top_p), ("parallel_tool_calls", req.parallel_tool_calls))
    body.update({k: v for k, v in scalars if v is not None})
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning"] = {"effort": req.reasoning.effort}
    if req.tools:
        body["tools"] = _tools(req.tools)
    if req.tool_choice is not None:
        body["tool_choice"] = _tool_choice(req.tool_choice)
    if req.text is not None and req.text.format is not None:
        body["response_format"] = _format(req.text.format)
    return Translation(req, body, origins)


def validate_responses(data: Any) -> tuple[Translation, ChatRequest]:
    """The Responses body, translated and checked by the chat validator; every refusal names the Responses field."""
    t = translate(data)
    try:
        return t, validate_request(t.body, stream_default=False)
    except InvalidRequest as e:
        raise t.rename(e) from None
