"""The llguidance grammar that forces a Hermes-style tool call (tool_choice "required" or a named function).

The text it admits is exactly what tool_parse.HermesToolParser reads back:

    <tool_call>
    {"name": "<one of the allowed names>", "arguments": <an object valid against that function's schema>}
    </tool_call>

one call, or (parallel_tool_calls not false, tool_choice "required") one or more separated by a
newline, then the end of the answer. The JSON is compact with json.dumps' separators (", " and
": "), so a small model cannot wander off into whitespace. Each function is its own alternative:
the name decides which schema the arguments follow. The grammar is llguidance's Lark dialect with
`%json {schema}` for the JSON; GenerationRequest.grammar carries it to the sampler.
"""

from __future__ import annotations

import json
from functools import lru_cache

# How the JSON is written inside the grammar: no free whitespace, json.dumps' separators.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _call_schema(name: str, parameters: dict) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": JSON_STYLE,
    }


def allowed_tools(tools: list[dict], tool_choice) -> list[dict]:
    """The tools a forced call may use: the named one, or all of them for "required"."""
    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        return [t for t in tools if t["function"]["name"] == name]
    return list(tools)


def needs_grammar(tools: list[dict], tool_choice) -> bool:
    """A forced call: "required" or a named function, with tools to call."""
    return bool(tools) and (tool_choice == "required" or isinstance(tool_choice, dict))


def tool_call_grammar(tools: list[dict], tool_choice, parallel: bool = True) -> str:
    """The Lark grammar of a forced Hermes tool call. tools: OpenAI function tools (dicts); tool_choice: "required" or named."""
    chosen = allowed_tools(tools, tool_choice)
    if not chosen:
        raise ValueError("no tool to call")
    lines = []
    many = parallel and not isinstance(tool_choice, dict)
    lines.append('start: call ("\\n" call)*' if many else "start: call")
    lines.append('call: "<tool_call>\\n" body "\\n</tool_call>"')
    lines.append("body: " + " | ".join(f"fn_{i}" for i in range(len(chosen))))
    for i, tool in enumerate(chosen):
        f = tool["function"]
        schema = _call_schema(f["name"], f.get("parameters") or {"type": "object", "properties": {}})
        lines.append(f"fn_{i}: %json {json.dumps(schema, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


@lru_cache(maxsize=256)
def _schema_error(schema_text: str) -> str:
    from llguidance import LLMatcher

    schema = json.loads(schema_text)
    grammar = tool_call_grammar([{"type": "function", "function": {"name": "f", "parameters": schema}}], "required")
    error = LLMatcher.validate_grammar(grammar)
    return " ".join(error.splitlines()[0].split())[:300] if error else ""


def schema_error(parameters: dict) -> str:
    """Why the grammar engine cannot compile a call with these parameters ("" when it can)."""
    try:
        return _schema_error(json.dumps(parameters, sort_keys=True))
    except RecursionError:
        return "the schema is nested too deeply"
