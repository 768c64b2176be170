"""Tools and tool turns in a chat-template prompt (every local model but gpt-oss, which harmony.py renders).

A template that knows tools (it reads the `tools` variable: Qwen 2.5/3, SmolLM3, Hermes, Llama 3.1,
...) gets them as `apply_chat_template(..., tools=...)` does, and the turns as vLLM hands them to
templates: an assistant turn's `tool_calls` with the arguments parsed back into an object (the
templates write `arguments | tojson`), a tool message with its `tool_call_id` and the `name` of the
function it answers.

A template without tools (the embedded SmolLM2-135M's) gets the Hermes/Qwen 2.5 convention written
into the messages themselves, which any chat template renders:
  - the system message ends with a "# Tools" block listing each function as JSON inside <tools></tools>
    and asking for calls as <tool_call>{"name": ..., "arguments": ...}</tool_call> (a system message
    is added when there is none);
  - an assistant turn that called functions is its content followed by one such block per call;
  - tool messages become one user message of <tool_response>...</tool_response> blocks (consecutive
    results together), as Qwen 2.5's template renders them.
The answer is then read back by tool_parse.HermesToolParser.
"""

from __future__ import annotations

import json
import re

_TOOLS_VARIABLE = re.compile(r"\btools\b")

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
)


def template_has_tools(template: str | None) -> bool:
    """Whether a chat template renders the `tools` it is given (it names the variable)."""
    return bool(template) and bool(_TOOLS_VARIABLE.search(template))


def tools_block(tools: list[dict]) -> str:
    return "\n".join([TOOLS_HEADER, *(json.dumps(t, ensure_ascii=False) for t in tools), TOOLS_FOOTER])


def _arguments(text: str):
    """A call's arguments as an object for a template; the text itself if it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def call_text(call: dict) -> str:
    """One call in the Hermes convention."""
    body = {"name": call["function"]["name"], "arguments": _arguments(call["function"]["arguments"])}
    return f"<tool_call>\n{json.dumps(body, ensure_ascii=False)}\n</tool_call>"


def _names(messages: list[dict]) -> dict[str, str]:
    return {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}


def native_messages(messages: list[dict]) -> list[dict]:
    """The turns as tool-aware templates read them."""
    names = _names(messages)
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [
                {**c, "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        if m["role"] == "tool":
            m["name"] = names.get(m.get("tool_call_id"), "")
        out.append(m)
    return out


def hermes_messages(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The turns (and tools) written as plain system/user/assistant text."""
    out: list[dict] = []
    for m in messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls"):
            parts = [m["content"]] if m.get("content") else []
            parts += [call_text(c) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif role == "tool":
            block = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        else:
            out.append({"role": role, "content": m["content"]})
    out = [{"role": m["role"], "content": m["content"]} for m in out]
    if tools:
        if out and out[0]["role"] == "system":
            system = out[0]["content"]
            out[0] = {"role": "system", "content": f"{system}\n\n{tools_block(tools)}" if system else tools_block(tools)}
        else:
            out.insert(0, {"role": "system", "content": tools_block(tools)})
    return out


def prompt_inputs(messages: list[dict], tools: list[dict], template: str | None) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools argument) for apply_chat_template, whichever way this template takes tools."""
    has_tools = bool(tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if not has_tools:
        return messages, None
    if template_has_tools(template):
        return native_messages(messages), (tools or None)
    return hermes_messages(messages, tools), None
