"""Tool calling on /v1/chat/completions and /api: validation, prompts, the Hermes parser, the grammar, the wire."""

from __future__ import annotations

import json
import random
import shutil

import httpx
import jsonschema
import openai
import pytest

from gptoss_space.backends.base import Delta
from gptoss_space.backends.local.chat_tokenizer import ChatTokenizer
from gptoss_space.backends.local.token_deltas import TokenDeltas
from gptoss_space.backends.local.tool_grammar import schema_error, tool_call_grammar
from gptoss_space.backends.local.tool_parse import HermesToolParser
from gptoss_space.backends.local.tool_prompt import TOOLS_HEADER, prompt_inputs
from gptoss_space.protocol.request import validate_request
from tests.conftest import MODEL_CACHE, make_settings
from tests.support.sse_client import parse_events
from tests.support.upstream import Reply, Upstream

SMOL = MODEL_CACHE / "SmolLM2-135M-Instruct"
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city"],
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a zone", "parameters": TIME}},
]
USER = {"role": "user", "content": "What's the weather in Paris?"}
CALL = {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
FOLLOW_UP = [
    USER,
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature": 21}'},
]


def post(server, path, body) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=30)


# -- validation: 400 naming the field -------------------------------------------------------------

BAD = [
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [TOOLS[0], {"type": "function", "function": {"name": "get_weather"}}]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"properties": 3}}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"functions": [{"name": "f"}]}, "functions"),
    # A forced call is decoded under a grammar: a schema the engine cannot compile is the client's error.
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "(("}}}}}], "tool_choice": "required"}, "tools[0].function.parameters"),
    ({"messages": [USER, FOLLOW_UP[1], {"role": "tool", "content": "x"}]}, "messages[2].tool_call_id"),
    ({"messages": [USER, FOLLOW_UP[1], {"role": "tool", "tool_call_id": "call_other", "content": "x"}]}, "messages[2].tool_call_id"),
    ({"messages": [USER, {"role": "tool", "tool_call_id": "call_abc123", "content": "x"}]}, "messages[1].role"),
    ({"messages": [USER, FOLLOW_UP[1], {"role": "tool", "tool_call_id": "call_abc123"}]}, "messages[2]"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": [USER, {"role": "assistant", "content": None}]}, "messages[1]"),
]


@pytest.mark.parametrize("extra, param", BAD)
def test_bad_tool_input_is_a_400_naming_the_field(scripted_server, extra, param):
    body = {"messages": [USER], **extra}
    r = post(scripted_server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"].startswith(f"Invalid '{param}': "), error
    assert error["type"] == "invalid_request_error"
    seed = post(scripted_server, "/api", {**body, "stream": False})
    assert seed.status_code == 400 and seed.json()["error"] == error["message"]
    assert scripted_server.backend.started == 0


def test_valid_tool_requests_reach_the_backend_with_their_tools(scripted_server):
    backend = scripted_server.backend
    bodies = [
        {"messages": [USER], "tools": TOOLS},
        {"messages": [USER], "tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
        {"messages": [USER], "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
        {"messages": [USER], "tools": TOOLS, "tool_choice": "none"},
        {"messages": FOLLOW_UP, "tools": TOOLS},
        {"messages": [USER], "tools": [{"type": "function", "function": {"name": "no_params"}}]},
    ]
    for body in bodies:
        assert post(scripted_server, "/v1/chat/completions", body).status_code == 200
    reqs = backend.requests
    assert reqs[0].tools == TOOLS and reqs[0].tool_choice is None and reqs[0].parallel_tool_calls
    assert reqs[1].tool_choice == "required" and reqs[1].parallel_tool_calls is False
    assert reqs[2].tool_choice == {"type": "function", "function": {"name": "get_time"}}
    assert reqs[3].tools == [] and reqs[3].tool_choice is None  # "none": the model is offered no tool
    assert reqs[4].messages[-2:] == [
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call_abc123"},
    ]
    assert reqs[5].tools[0]["function"]["parameters"] == {"type": "object", "properties": {}}


# -- the answer through the official SDK -----------------------------------------------------------

SCRIPTED_CALL = [
    Delta(content="Let me look."),
    Delta(tool_calls=[{"index": 0, "id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]),
    Delta(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
    Delta(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
    Delta(tool_calls=[{"index": 1, "id": "call_t1", "type": "function", "function": {"name": "get_time", "arguments": ""}}]),
    Delta(tool_calls=[{"index": 1, "function": {"arguments": '{"zone": "CET"}'}}]),
]


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)


def test_sdk_reads_message_tool_calls(scripted_server):
    scripted_server.backend.enqueue(*SCRIPTED_CALL[1:], finish_reason="tool_calls")
    done = sdk(scripted_server).chat.completions.create(model="m", messages=[USER], tools=TOOLS)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.id, c.type, c.function.name) for c in calls] == [("call_w1", "function", "get_weather"), ("call_t1", "function", "get_time")]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"} and calls[1].function.arguments == '{"zone": "CET"}'


def test_sdk_accumulates_streamed_tool_calls(scripted_server):
    scripted_server.backend.enqueue(*SCRIPTED_CALL, finish_reason="tool_calls")
    with sdk(scripted_server).chat.completions.stream(model="m", messages=[USER], tools=TOOLS) as stream:
        chunks = [e.chunk for e in stream if e.type == "chunk"]
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and message.content == "Let me look."
    assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls] == [
        ("call_w1", "get_weather", '{"city": "Paris"}'), ("call_t1", "get_time", '{"zone": "CET"}')
    ]
    # OpenAI's shape: the first chunk of a call names it, the later ones carry only argument text.
    pieces = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id == "call_w1" and pieces[0].function.name == "get_weather" and pieces[0].function.arguments == ""
    assert pieces[1].id is None and pieces[1].function.name is None and pieces[1].function.arguments == '{"city": '


def test_raw_stream_and_seed_api_use_the_openai_shapes(scripted_server):
    scripted_server.backend.enqueue(*SCRIPTED_CALL[1:4], finish_reason="tool_calls")
    events = parse_events(post(scripted_server, "/api", {"messages": [USER], "tools": TOOLS}).text)
    deltas = [e["choices"][0] for e in events if isinstance(e, dict) and e.get("choices")]
    assert deltas[0]["delta"] == {"role": "assistant", "tool_calls": [SCRIPTED_CALL[1].tool_calls[0]]}
    assert deltas[1]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}
    assert deltas[-1] == {"index": 0, "delta": {}, "finish_reason": "tool_calls"}
    scripted_server.backend.enqueue(*SCRIPTED_CALL[1:4], finish_reason="tool_calls")
    message = post(scripted_server, "/api", {"messages": [USER], "tools": TOOLS, "stream": False}).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}


def test_sdk_follow_up_turn_with_the_tool_result(scripted_server):
    scripted_server.backend.enqueue("It is 21 degrees in Paris.")
    done = sdk(scripted_server).chat.completions.create(model="m", messages=FOLLOW_UP, tools=TOOLS)
    assert done.choices[0].message.content == "It is 21 degrees in Paris." and done.choices[0].finish_reason == "stop"
    sent = scripted_server.backend.requests[-1].messages
    assert sent[-1] == {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call_abc123"}


# -- the Hermes parser, on pieces split anywhere ----------------------------------------------------

HERMES = (
    'Checking.\n\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa}ris", "n": {"a": [1, "}"]}}}\n</tool_call>\n'
    '<tool_call>\n{"arguments": {"zone": "CET"}, "name": "get_time"}\n</tool_call>'
)


def run_parser(text: str, cuts: list[int], parallel: bool = True):
    parser, content, pieces, start = HermesToolParser(parallel=parallel), [], [], 0
    for end in [*sorted(set(cuts)), len(text)]:
        c, p = parser.feed(text[start:end])
        content.append(c)
        pieces += p
        start = end
    c, p = parser.finish()
    return "".join(content + [c]), pieces


def joined(pieces):
    from gptoss_space.protocol.answer import join_tool_calls

    return [(c["function"]["name"], c["function"]["arguments"]) for c in join_tool_calls(pieces)]


def test_hermes_parser_on_pieces_split_at_awkward_places():
    rng = random.Random(7)
    every_char = list(range(1, len(HERMES)))
    for cuts in [[], every_char, *[rng.sample(every_char, rng.randint(1, 60)) for _ in range(200)]]:
        content, pieces = run_parser(HERMES, cuts)
        assert content == "Checking."
        calls = joined(pieces)
        assert [name for name, _ in calls] == ["get_weather", "get_time"]
        assert json.loads(calls[0][1]) == {"city": "Pa}ris", "n": {"a": [1, "}"]}}
        assert json.loads(calls[1][1]) == {"zone": "CET"}
        heads = [p for p in pieces if "id" in p]
        assert all(p["id"].startswith("call_") and len(p["id"]) == 29 and p["function"]["arguments"] == "" for p in heads)
    _, pieces = run_parser(HERMES, every_char)
    assert sum(1 for p in pieces if p["index"] == 0) > 5  # the arguments streamed, not sent in one lump


def test_hermes_parser_edge_cases():
    assert run_parser("a < b <tool", [3, 7]) == ("a < b <tool", [])
    assert run_parser("see <tool_call>not json</tool_call> ok", [9]) == ("see <tool_call>not json</tool_call> ok", [])
    content, pieces = run_parser(HERMES, [], parallel=False)
    assert content == "Checking." and [n for n, _ in joined(pieces)] == ["get_weather"]
    content, pieces = run_parser('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa', [14])
    assert content == "" and joined(pieces) == [("get_weather", '{"city": "Pa')]  # cut off by max_tokens
    content, pieces = run_parser('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', [])
    assert joined(pieces) == [("f", '{"a": 1}')]


def test_token_deltas_find_calls_in_the_embedded_tokenizer_ids():
    tok = ChatTokenizer(SMOL)
    ids = tok.encode(HERMES, add_special_tokens=False)
    for parallel, names in ((True, ["get_weather", "get_time"]), (False, ["get_weather"])):
        deltas = TokenDeltas(tok, [], harmony=False, tools=True, parallel=parallel)
        out = []
        for i in ids:
            out.append(deltas.push(i))
            if deltas.stopped:
                break
        out.append(deltas.finish())
        out = [d for d in out if d]
        assert "".join(d.content for d in out) == "Checking." and deltas.called
        assert [n for n, _ in joined([p for d in out for p in d.tool_calls])] == names
        assert deltas.stopped is (not parallel)
    plain = TokenDeltas(tok, [], harmony=False)  # no tools offered: the text is content
    assert "".join(d.content for i in ids if (d := plain.push(i))) == HERMES


# -- the grammar of a forced call (llguidance) ------------------------------------------------------


@pytest.fixture(scope="module")
def ll_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(SMOL / "tokenizer.json"))


def accepts(grammar: str, tok, text: str) -> bool:
    from llguidance import LLMatcher, LLTokenizer

    matcher = LLMatcher(LLTokenizer(tok.to_str(), eos_token=tok.token_to_id("<|im_end|>")), grammar, log_level=0)
    ok = matcher.consume_tokens(tok.encode(text, add_special_tokens=False).ids) and not matcher.is_error()
    return bool(ok and matcher.is_accepting())


def call(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def test_forced_call_grammar_compiles_accepts_calls_and_rejects_the_rest(ll_tokenizer):
    from llguidance import LLMatcher

    required = tool_call_grammar(TOOLS, "required", parallel=True)
    named = tool_call_grammar(TOOLS, {"type": "function", "function": {"name": "get_time"}})
    single = tool_call_grammar(TOOLS, "required", parallel=False)
    for grammar in (required, named, single):
        assert LLMatcher.validate_grammar(grammar) == ""
    paris, cet = call("get_weather", {"city": "Paris", "unit": "celsius"}), call("get_time", {"zone": "CET"})
    assert accepts(required, ll_tokenizer, paris) and accepts(required, ll_tokenizer, cet)
    assert accepts(required, ll_tokenizer, paris + "\n" + cet)
    assert not accepts(single, ll_tokenizer, paris + "\n" + cet) and accepts(single, ll_tokenizer, paris)
    assert accepts(named, ll_tokenizer, cet) and not accepts(named, ll_tokenizer, paris)
    for bad in [
        "Sure! " + paris,  # text first: a forced call is only the call
        call("get_weather", {"unit": "celsius"}),  # a required argument missing
        call("get_weather", {"city": "Paris", "unit": "kelvin"}),  # not in the enum
        call("get_weather", {"city": 3}),  # wrong type
        call("get_wether", {"city": "Paris"}),  # no such function
        '<tool_call>\n{"arguments": {"zone": "CET"}, "name": "get_time"}\n</tool_call>',  # the parser's order
        paris[:-3],  # unfinished
    ]:
        assert not accepts(required, ll_tokenizer, bad), bad
    # Whatever the grammar admits, the parser reads back as the same call.
    _, pieces = run_parser(paris + "\n" + cet, [])
    assert joined(pieces) == [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("get_time", '{"zone": "CET"}')]


def test_schema_errors_are_reported_and_the_backend_sets_the_grammar(model_server):
    assert schema_error(WEATHER) == "" and "regex" in schema_error({"type": "object", "properties": {"a": {"pattern": "(("}}})
    service, backend = model_server.service, model_server.service.backend
    for choice, expected in (("auto", None), ("required", tool_call_grammar(TOOLS, "required", True))):
        req = service.build(validate_request({"messages": [USER], "tools": TOOLS, "tool_choice": choice}, stream_default=False))
        backend._tool_grammar(req)
        assert req.grammar == expected


# -- prompts: the embedded model's template (no tools support) and a template with tools ------------


def test_embedded_model_prompt_carries_tools_calls_and_results(model_server):
    service, backend = model_server.service, model_server.service.backend
    req = service.build(validate_request({"messages": FOLLOW_UP, "tools": TOOLS}, stream_default=False))
    prompt = backend.loaded.tokenizer.decode(backend.encode(req))
    system = prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nCurrent date and time:") and TOOLS_HEADER in system
    assert all(json.dumps(t) in system for t in TOOLS)
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in prompt
    assert '<|im_start|>user\n<tool_response>\n{"temperature": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n' in prompt
    assert backend.loaded.tokenizer.decode(backend.encode(req)) == prompt
    none = service.build(validate_request({"messages": [USER], "tools": TOOLS, "tool_choice": "none"}, stream_default=False))
    assert "<tools>" not in backend.loaded.tokenizer.decode(backend.encode(none))


TOOLS_TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}{% continue %}{% endif %}
{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response name="{{ message.name }}">
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_a_template_with_tools_gets_them_as_transformers_passes_them(tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "qwenish"
    shutil.copytree(SMOL, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "chat_template.jinja").write_text(TOOLS_TEMPLATE)
    messages = [{"role": "system", "content": "Be brief."}, *FOLLOW_UP]
    messages[2] = {"role": "assistant", "content": "", "tool_calls": [CALL]}
    chat, tools = prompt_inputs(messages, TOOLS, TOOLS_TEMPLATE)
    assert tools == TOOLS and chat[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"} and chat[3]["name"] == "get_weather"
    lean = ChatTokenizer(folder).apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True)
    full = AutoTokenizer.from_pretrained(folder).apply_chat_template(chat, tools=tools, tokenize=False, add_generation_prompt=True)
    assert lean == full
    assert lean.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>" + json.dumps(TOOLS[0], ensure_ascii=False))
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in lean
    assert '<tool_response name="get_weather">\n{"temperature": 21}\n</tool_response>' in lean
    ids = ChatTokenizer(folder).apply_chat_template(chat, tools=tools, add_generation_prompt=True, sanitize_control_tokens=True)
    assert ChatTokenizer(folder).decode(ids) == lean


# -- the real embedded model behind the real server -------------------------------------------------


def test_embedded_model_with_tools_answers_in_openai_shape(model_server):
    done = sdk(model_server).chat.completions.create(
        model="m", messages=FOLLOW_UP, tools=TOOLS, max_tokens=24, temperature=0
    )
    choice = done.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert (choice.message.content or "") or choice.message.tool_calls
    assert "<tool_call>" not in (choice.message.content or "") or choice.finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_forced_call_from_the_embedded_model_validates(model_server, stream):
    client = sdk(model_server)
    kw = dict(model="m", messages=[USER], tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
              max_tokens=80, temperature=0.7, seed=3)
    if stream:
        with client.chat.completions.stream(**kw) as s:
            done = s.get_final_completion()
    else:
        done = client.chat.completions.create(**kw)
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (c,) = choice.message.tool_calls
    assert c.function.name == "get_weather" and c.id.startswith("call_")
    jsonschema.validate(json.loads(c.function.arguments), WEATHER)


# -- the proxy passes tools upstream and maps the upstream's calls back -----------------------------


def _sse(*chunks) -> bytes:
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


def _chunk(delta: dict, finish: str | None = None) -> dict:
    return {"id": "u", "object": "chat.completion.chunk", "created": 1, "model": "u",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_proxy_passes_tools_and_maps_the_upstream_calls():
    from gptoss_space.http.app import create_app
    from tests.support.servers import LiveServer

    streamed = _sse(
        _chunk({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_up", "type": "function",
                                                     "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}),
        _chunk({}, "tool_calls"),
    )
    whole = json.dumps({"id": "u", "object": "chat.completion", "created": 1, "model": "u", "choices": [{
        "index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": None, "tool_calls": [CALL]}}]}).encode()
    with Upstream(Reply(body=streamed, content_type="text/event-stream"), Reply(body=whole, content_type="application/json")) as up:
        settings = make_settings(backend="proxy", upstream_url=up.url, upstream_model="u")
        with LiveServer(create_app(settings, with_ui=False), ready_path="/api") as server:
            client = sdk(server)
            with client.chat.completions.stream(model="m", messages=FOLLOW_UP, tools=TOOLS, tool_choice="required",
                                                parallel_tool_calls=False) as s:
                final = s.get_final_completion()
            done = client.chat.completions.create(model="m", messages=[USER], tools=TOOLS)
    sent = up.requests[0].json
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "required" and sent["parallel_tool_calls"] is False
    assert sent["messages"][-2]["tool_calls"] == [CALL] and sent["messages"][-1]["tool_call_id"] == "call_abc123"
    assert "parallel_tool_calls" not in up.requests[1].json and "tool_choice" not in up.requests[1].json
    for answer in (final, done):
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] in (
            [("call_up", "get_weather", '{"city": "Paris"}')], [("call_abc123", "get_weather", '{"city": "Paris"}')])
