"""Tool calling on the request side: function definitions, tool_choice, and the checks across messages.

The shapes are OpenAI's Chat Completions ones:
  tools:        [{"type": "function", "function": {"name", "description", "parameters", "strict"}}]
  tool_choice:  "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}
  assistant:    {"role": "assistant", "content": null, "tool_calls": [{"id", "type": "function",
                 "function": {"name", "arguments": "<JSON text>"}}]}
  tool:         {"role": "tool", "tool_call_id": "...", "content": "..."}
Every refusal is an InvalidRequest naming the field as OpenAI does (`tools[0].function.name`,
`messages[2].tool_call_id`, `tool_choice`). Where OpenAI is stricter or looser it says so below.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gptoss_space.errors import InvalidRequest

# OpenAI's rule for function names (it documents "a-z, A-Z, 0-9, underscores and dashes, max 64").
NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128  # OpenAI's limit on `tools`
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, v: dict | None) -> dict | None:
        # A JSON schema of the arguments object: OpenAI refuses any other top-level type.
        if v is not None and "type" in v and v["type"] != "object":
            raise ValueError(f"the parameters schema must be a JSON Schema of type 'object', got type {v['type']!r}")
        if v is not None:
            _check_schema(v)
        return v

    @property
    def schema(self) -> dict:
        """The arguments' schema; no parameters means an empty object, as OpenAI reads it."""
        return self.parameters if self.parameters is not None else EMPTY_PARAMETERS


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["function"]
    function: FunctionDefinition

    def as_dict(self) -> dict:
        """The OpenAI shape, with the parameters a chat template or harmony can render."""
        f = self.function
        function: dict[str, Any] = {"name": f.name}
        if f.description is not None:
            function["description"] = f.description
        function["parameters"] = f.schema
        if f.strict is not None:
            function["strict"] = f.strict
        return {"type": "function", "function": function}


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    name: str
    arguments: str


class ToolCall(BaseModel):
    """One call in an earlier assistant turn, as the client echoes it back."""

    model_config = ConfigDict(extra="ignore", strict=True)
    id: str = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCall

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.function.name, "arguments": self.function.arguments}}


def parse_tool_choice(v: Any) -> str | dict | None:
    """The field validator of `tool_choice`: a mode string or {"type": "function", "function": {"name"}}."""
    if v is None or v in ("auto", "none", "required"):
        return v
    if isinstance(v, dict):
        function = v.get("function")
        if v.get("type") != "function":
            raise ValueError("a named tool choice needs \"type\": \"function\"")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ValueError("a named tool choice needs \"function\": {\"name\": \"...\"}")
        return {"type": "function", "function": {"name": function["name"]}}
    raise ValueError("must be 'auto', 'none', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}")


def _check_schema(schema: Any, depth: int = 0) -> None:
    """A JSON schema is an object (or a boolean) all the way down where subschemas are expected."""
    if depth > 64:
        raise ValueError("the parameters schema is nested too deeply")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError("the parameters schema must be a JSON object")
    if "type" in schema and not isinstance(schema["type"], (str, list)):
        raise ValueError("'type' in the parameters schema must be a string or a list")
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if key in schema:
            if not isinstance(schema[key], dict):
                raise ValueError(f"'{key}' in the parameters schema must be an object")
            for sub in schema[key].values():
                _check_schema(sub, depth + 1)
    for key in ("items", "additionalProperties", "not", "contains"):
        if key in schema and not isinstance(schema[key], list):
            _check_schema(schema[key], depth + 1)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        if key in schema:
            if not isinstance(schema[key], list):
                raise ValueError(f"'{key}' in the parameters schema must be an array")
            for sub in schema[key]:
                _check_schema(sub, depth + 1)
    if "required" in schema and not (
        isinstance(schema["required"], list) and all(isinstance(r, str) for r in schema["required"])
    ):
        raise ValueError("'required' in the parameters schema must be an array of strings")


def check_tools(chat) -> None:
    """Checks across fields, after each field validated alone. `chat` is a protocol.request.ChatRequest."""
    tools = chat.tools or []
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"Invalid 'tools': at most {MAX_TOOLS} tools are allowed, got {len(tools)}", param="tools")
    names: dict[str, int] = {}
    for i, tool in enumerate(tools):
        name = tool.function.name
        if name in names:
            raise InvalidRequest(
                f"Invalid 'tools[{i}].function.name': the name {name!r} is already used by tools[{names[name]}]",
                param=f"tools[{i}].function.name",
            )
        names[name] = i
    choice = chat.tool_choice
    if choice is not None and choice not in ("auto", "none"):
        # "auto" and "none" without tools say nothing and are accepted (OpenAI refuses every tool_choice without tools).
        if not tools:
            raise InvalidRequest("Invalid 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified", param="tool_choice")
        if isinstance(choice, dict) and choice["function"]["name"] not in names:
            raise InvalidRequest(
                f"Invalid 'tool_choice': no function named {choice['function']['name']!r} in 'tools'", param="tool_choice"
            )
        if choice == "required" or isinstance(choice, dict):
            _check_compiles(chat, names)
    _check_messages(chat.messages)


def _check_compiles(chat, names: dict[str, int]) -> None:
    """A forced call is decoded under a grammar: each schema it may use must compile (400 naming it, not a 500 later)."""
    from gptoss_space.backends.local.tool_grammar import schema_error

    choice = chat.tool_choice
    wanted = [names[choice["function"]["name"]]] if isinstance(choice, dict) else range(len(chat.tools))
    for i in wanted:
        error = schema_error(chat.tools[i].function.schema)
        if error:
            raise InvalidRequest(
                f"Invalid 'tools[{i}].function.parameters': the grammar engine cannot compile this schema: {error}",
                param=f"tools[{i}].function.parameters",
            )


def _check_messages(messages) -> None:
    """A tool message answers a call of the assistant message before it (OpenAI's rule; it names the field)."""
    open_ids: set[str] = set()  # the calls of the latest assistant turn, while only tool messages follow it
    for i, m in enumerate(messages):
        if m.role == "tool":
            if m.tool_call_id is None:
                raise InvalidRequest(
                    f"Invalid 'messages[{i}].tool_call_id': a tool message needs the 'tool_call_id' it answers",
                    param=f"messages[{i}].tool_call_id",
                )
            if not open_ids:
                raise InvalidRequest(
                    f"Invalid 'messages[{i}].role': messages with role 'tool' must be a response to a preceding message with 'tool_calls'",
                    param=f"messages[{i}].role",
                )
            if m.tool_call_id not in open_ids:
                raise InvalidRequest(
                    f"Invalid 'messages[{i}].tool_call_id': {m.tool_call_id!r} is not the id of a call in the assistant message before it",
                    param=f"messages[{i}].tool_call_id",
                )
            continue
        open_ids = {c.id for c in m.tool_calls} if m.role == "assistant" and m.tool_calls else set()


def tool_text_size(chat) -> int:
    """Characters of tool definitions and earlier calls, counted toward the request's text limit."""
    try:
        size = sum(len(json.dumps(t.as_dict())) for t in chat.tools or [])
    except RecursionError:
        raise InvalidRequest("Invalid 'tools': nested too deeply", param="tools") from None
    for m in chat.messages:
        for call in m.tool_calls or []:
            size += len(call.function.name) + len(call.function.arguments) + len(call.id)
        size += len(m.tool_call_id or "")
    return size
