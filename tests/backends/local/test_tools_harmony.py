"""gpt-oss tool calls in both directions: harmony's functions namespace, calls and results in the prompt; calls out of its output."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from gptoss_space.backends.local.harmony import HarmonyParser, build_conversation, harmony_encoding, render_harmony_ids
from gptoss_space.http.app import create_app
from gptoss_space.protocol.answer import join_tool_calls
from gptoss_space.protocol.request import validate_request
from tests.conftest import make_settings
from tests.support.servers import LiveServer
from tests.support.sse_client import parse_events
from tests.support.tiny_models import TOOL_ARGUMENTS, TOOL_NAME, TOOL_REASONING, build_tiny_gpt_oss, script_ids

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]
USER = {"role": "user", "content": "What's the weather in Paris?"}
CALL = {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
FOLLOW_UP = [
    USER,
    {"role": "assistant", "content": None, "reasoning": "I should call get_weather.", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature": 21}'},
]


def parsed_prompt(ids: list[int]) -> list[dict]:
    """The prompt read back by openai-harmony's own parser (without the trailing `<|start|>assistant`)."""
    enc = harmony_encoding()
    assert enc.decode(ids[-2:]) == "<|start|>assistant"
    return [m.to_dict() for m in enc.parse_messages_from_completion_tokens(ids[:-2], None)]


def test_tools_calls_and_results_render_as_harmony_messages():
    messages = [{"role": "system", "content": "Be brief."}, *FOLLOW_UP]
    messages = validate_request({"messages": messages, "tools": TOOLS}, stream_default=False).messages
    from gptoss_space.prompting import PromptOptions, compose_messages, utc_now

    composed = compose_messages(messages, PromptOptions(), utc_now(), date_in_text=False)
    got = parsed_prompt(render_harmony_ids(composed, tools=TOOLS))
    system, developer, user, analysis, call, result = got
    assert "Calls to these tools must go to the commentary channel: 'functions'." in system["content"][0]["text"]
    dev = developer["content"][0]["text"]
    assert dev.startswith("# Instructions\n\nBe brief.\n\n# Tools\n\n## functions\n\nnamespace functions {")
    assert "// Current weather in a city\ntype get_weather = (_: {\ncity: string,\ndays?: number,\n}) => any;" in dev
    assert "type get_time = () => any;" in dev
    assert user["content"][0]["text"] == USER["content"]
    assert (analysis["channel"], analysis["content"][0]["text"]) == ("analysis", "I should call get_weather.")
    assert call["role"] == "assistant" and call["channel"] == "commentary" and call["recipient"] == "functions.get_weather"
    assert call["content_type"] == "<|constrain|>json" and call["content"][0]["text"] == '{"city": "Paris"}'
    assert result["role"] == "tool" and result["name"] == "functions.get_weather" and result["recipient"] == "assistant"
    assert result["channel"] == "commentary" and result["content"][0]["text"] == '{"temperature": 21}'


def test_without_tools_the_prompt_has_no_functions_namespace():
    got = parsed_prompt(render_harmony_ids([USER]))
    assert [m["role"] for m in got] == ["system", "user"]
    assert "functions" not in got[0]["content"][0]["text"]
    conversation = build_conversation([USER], tools=TOOLS)
    assert "namespace functions" in harmony_encoding().decode(
        harmony_encoding().render_conversation_for_completion(conversation, __import__("openai_harmony").Role.ASSISTANT)
    )


def run(parser: HarmonyParser, ids: list[int]):
    reasoning, content, pieces = [], [], []
    for token in ids:
        r, c = parser.push(token)
        reasoning.append(r)
        content.append(c)
        pieces += parser.take_calls()
    r, c = parser.finish()
    return "".join(reasoning + [r]), "".join(content + [c]), pieces + parser.take_calls()


def test_parser_turns_a_commentary_call_into_streamed_pieces():
    ids = script_ids("tool")
    reasoning, content, pieces = run(HarmonyParser(tools=True), ids)
    assert (reasoning, content) == (TOOL_REASONING, "")
    assert pieces[0]["id"].startswith("call_") and pieces[0]["function"] == {"name": TOOL_NAME, "arguments": ""}
    assert all(set(p) == {"index", "function"} for p in pieces[1:]) and len(pieces) > 2  # arguments piece by piece
    (whole,) = join_tool_calls(pieces)
    assert whole["function"] == {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}
    # Without tools offered, a call stays reasoning, as before.
    reasoning, content, pieces = run(HarmonyParser(tools=False), ids)
    assert pieces == [] and reasoning == TOOL_REASONING + TOOL_ARGUMENTS and content == ""


def test_parser_reads_two_calls_and_stops_after_one_without_parallel_calls():
    enc = harmony_encoding()
    text = (
        "<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}<|call|>"
        '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>'
    )
    ids = enc.encode(text, allowed_special="all")
    _, _, pieces = run(HarmonyParser(tools=True), ids)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in join_tool_calls(pieces)] == [
        ("get_time", "{}"), ("get_weather", '{"city": "Oslo"}')
    ]
    single = HarmonyParser(tools=True, parallel=False)
    _, _, pieces = run(single, ids)
    assert single.done and [c["function"]["name"] for c in join_tool_calls(pieces)] == ["get_time"]


# -- the tiny scripted gpt-oss behind the real server -----------------------------------------------


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    path = build_tiny_gpt_oss(tmp_path_factory.mktemp("tiny-gpt-oss-tools"), scripted="tool")
    app = create_app(make_settings(model=str(path), model_name="gpt-oss-tiny"), with_ui=False)
    with LiveServer(app, ready_path="/api") as server:
        server.service = app.state.service
        yield server


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def test_gpt_oss_call_through_the_sdk(tool_server):
    done = sdk(tool_server).chat.completions.create(model="gpt-oss-tiny", messages=[USER], tools=TOOLS, temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, call.function.arguments) == (TOOL_NAME, TOOL_ARGUMENTS)
    assert choice.message.model_extra["reasoning"] == TOOL_REASONING


def test_gpt_oss_call_streamed_through_the_sdk(tool_server):
    with sdk(tool_server).chat.completions.stream(model="gpt-oss-tiny", messages=[USER], tools=TOOLS, temperature=0) as s:
        chunks = [e.chunk for e in s if e.type == "chunk"]
        final = s.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == (TOOL_NAME, TOOL_ARGUMENTS)
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id == call.id and pieces[0].function.name == TOOL_NAME
    assert len(pieces) > 2 and all(p.id is None and p.function.name is None for p in pieces[1:])


def test_without_tools_the_call_is_reasoning_and_no_markup_leaks(tool_server):
    r = httpx.post(tool_server.url + "/api", json={"messages": [USER], "temperature": 0}, timeout=60)
    events = parse_events(r.text)
    deltas = [e["choices"][0] for e in events if isinstance(e, dict) and e.get("choices")]
    assert not any("tool_calls" in d["delta"] for d in deltas) and deltas[-1]["finish_reason"] == "stop"
    assert "".join(d["delta"].get("reasoning", "") for d in deltas) == TOOL_REASONING + TOOL_ARGUMENTS
    assert "<|" not in r.text


def test_gpt_oss_follow_up_turn_renders_the_call_and_its_result(tool_server):
    service, backend = tool_server.service, tool_server.service.backend
    body = {"messages": FOLLOW_UP, "tools": TOOLS}
    r = httpx.post(tool_server.url + "/v1/chat/completions", json={**body, "temperature": 0}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "tool_calls")
    req = service.build(validate_request(body, stream_default=False))
    got = parsed_prompt(backend.encode(req))
    assert [(m["role"], m.get("channel"), m.get("recipient")) for m in got[2:]] == [
        ("user", None, None), ("assistant", "analysis", None), ("assistant", "commentary", "functions.get_weather"),
        ("tool", "commentary", "assistant"),
    ]
    assert got[-1]["name"] == "functions.get_weather" and json.loads(got[-1]["content"][0]["text"]) == {"temperature": 21}
    assert "namespace functions" in got[1]["content"][0]["text"]
