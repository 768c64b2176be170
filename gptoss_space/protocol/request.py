"""Request validation and the JSON shapes of completions, chunks and usage."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from gptoss_space.errors import InvalidRequest, PayloadTooLarge
from gptoss_space.protocol.response_format import ResponseFormat, format_grammar, parse_response_format
from gptoss_space.protocol.tools import Tool, ToolCall, check_tools, parse_tool_choice

MISSING_MESSAGES = "Missing messages array"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    # "developer" is OpenAI's newer name for a system message.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    # An assistant turn that called functions, and a tool message answering one of those calls.
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    # Reasoning of an earlier assistant turn; dropped from gpt-oss prompts as harmony requires.
    reasoning: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        # OpenAI lets only an assistant message with tool_calls omit content.
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs 'content'")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only an assistant message may carry 'tool_calls'")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    @property
    def normalized_role(self) -> str:
        return "system" if self.role == "developer" else self.role


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    effort: Literal["low", "medium", "high"] | None = None


class ChatRequest(BaseModel):
    """The body of POST /api and /v1/chat/completions. Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    stream: bool = True
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    # The range torch.Generator.manual_seed takes (a larger seed was a 500).
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    reasoning: ReasoningOptions | None = None
    model: str | None = None
    # Each answer token's logprob (and its top_logprobs most likely alternatives): OpenAI's range and rule.
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Fields OpenAI clients rely on that this server cannot honour are refused, not ignored.
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type": "function", "function": {"name": ...}}
    parallel_tool_calls: bool | None = None  # false: at most one call per answer
    # The deprecated `functions`/`function_call` pair: refused, `tools` replaces it.
    functions: list[Any] | None = None
    response_format: ResponseFormat | None = None

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _max_tokens(cls, v: int | None) -> int | None:
        if v is not None and v != -1 and v < 1:
            raise ValueError("must be -1 (unlimited) or a positive integer")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("functions")
    @classmethod
    def _functions(cls, v: list | None) -> list | None:
        if v:
            raise ValueError("the deprecated 'functions' parameter is not supported; use 'tools'")
        return v

    @field_validator("tool_choice", mode="plain")
    @classmethod
    def _tool_choice(cls, v: Any) -> Any:
        return parse_tool_choice(v)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("logprobs") is not True:
            raise ValueError("'logprobs' must be true when 'top_logprobs' is given")
        return v

    @field_validator("response_format", mode="before")
    @classmethod
    def _response_format(cls, v: Any) -> Any:
        return parse_response_format(v)

    @property
    def response_format_sent(self) -> dict | None:
        """response_format as the client sent it (for a proxy to forward unchanged)."""
        fmt = self.response_format
        return None if fmt is None else fmt.model_dump(by_alias=True, exclude_unset=True)

    def grammar(self) -> str | None:
        """The grammar response_format asks for, compile-checked (InvalidRequest naming it); None for free text."""
        return format_grammar(self.response_format)

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def requested_max_tokens(self) -> int:
        """-1 when unbounded by the client."""
        v = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return -1 if v is None else v

    @property
    def effort(self) -> str | None:
        if self.reasoning_effort:
            return self.reasoning_effort
        return self.reasoning.effort if self.reasoning else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def tool_dicts(self) -> list[dict]:
        """The tools the model is offered: none when tool_choice is "none" (OpenAI: it will not call one)."""
        if not self.tools or self.tool_choice == "none":
            return []
        return [t.as_dict() for t in self.tools]


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"str", "list[TextPart]", "list[str]", "none", "function-after[_stop(), union[str,constrained-list[str]]]"}:
            continue
        elif "[" in str(part) or "(" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict) -> str:
    field = _loc(err["loc"]) or "body"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"Invalid '{field}': {msg}"


def _best_error(errors: list[dict]) -> dict:
    # A union reports one error per branch; the branch that got furthest names the field best.
    return max(errors, key=lambda e: len([p for p in e["loc"] if isinstance(p, int) or "[" not in str(p)]))


def parse_body(raw: bytes, *, max_bytes: int) -> Any:
    """Decode a request body to JSON, refusing oversized, non-UTF-8 and malformed input."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body too large: {len(raw)} bytes (limit {max_bytes})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"Invalid JSON: body is not valid UTF-8 (byte {e.start})") from None
    if not text.strip():
        raise InvalidRequest("Invalid JSON: request body is empty")
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidRequest("Invalid JSON: nested too deeply") from None
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"Invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError:
        # Python refuses to convert an integer literal of more than 4,300 digits (CVE-2020-10735).
        raise InvalidRequest("Invalid JSON: a number has too many digits") from None
    # "\ud800" is valid JSON but no Unicode text: it would fail later, in the tokenizer or the answer.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("Invalid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
        except RecursionError:
            raise InvalidRequest("Invalid JSON: nested too deeply") from None
    return data


def validate_request(data: Any, *, stream_default: bool) -> ChatRequest:
    """Turn decoded JSON into a ChatRequest or raise InvalidRequest naming the field."""
    if not isinstance(data, dict):
        raise InvalidRequest("Invalid request: body must be a JSON object")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest(MISSING_MESSAGES, param="messages")
    if "stream" not in data or data["stream"] is None:
        data = {**data, "stream": stream_default}
    try:
        chat = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = _best_error(e.errors(include_url=False))
        raise InvalidRequest(_message(err), param=_loc(err["loc"]) or None) from None
    except RecursionError:
        raise InvalidRequest("Invalid request: nested too deeply") from None
    check_tools(chat)
    return chat


def request_body_doc() -> dict:
    """ChatRequest as an OpenAPI requestBody, self-contained (the routes read the raw body to keep their own errors)."""
    schema = ChatRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            # A discriminator's mapping points into $defs, which are inlined away: oneOf says the same.
            return {k: inline(v) for k, v in node.items() if k != "discriminator"}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:24]


def now_unix() -> int:
    return int(time.time())


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    *, id: str, created: int, model: str, content: str, reasoning: str, finish_reason: str, usage: dict,
    tool_calls: list[dict] | None = None,
) -> dict:
    # OpenAI: content is null when the answer is only tool calls.
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning"] = reasoning
        message["reasoning_content"] = reasoning
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage,
    }


def chunk_body(
    *,
    id: str,
    created: int,
    model: str,
    delta: dict | None = None,
    finish_reason: str | None = None,
    usage: dict | None = None,
    with_choice: bool = True,
) -> dict:
    body: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": created, "model": model}
    body["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}] if with_choice else []
    if usage is not None:
        body["usage"] = usage
    return body
