"""POST /v1/responses through real uvicorn servers and the official openai SDK: answers, events, refusals, the gate."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from gptoss_space.backends.base import Delta
from gptoss_space.errors import ContextLengthExceeded, GenerationFailed, InvalidRequest
from gptoss_space.http.app import create_app
from gptoss_space.protocol.responses import translate
from tests.conftest import make_settings
from tests.ratelimit.test_limits_app import TimedBackend
from tests.support.servers import LiveServer


def chat_body(data) -> dict:
    """The chat-completions body a Responses body becomes."""
    return translate(data).body


def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def events_of(text: str) -> list[dict]:
    """Typed SSE events: the `event:` line must name the data's own type."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        event = json.loads(lines["data"])
        assert lines["event"] == event["type"], block
        out.append(event)
    return out


def post(server, body: dict, **kw) -> httpx.Response:
    return httpx.post(server.url + "/v1/responses", json=body, timeout=30, **kw)


MESSAGE_EVENTS = [
    "response.output_item.added", "response.content_part.added", "response.output_text.delta",
    "response.output_text.delta", "response.output_text.done", "response.content_part.done",
    "response.output_item.done",
]


# -- the answer, through the SDK ---------------------------------------------------------------------


def test_sdk_create_returns_the_backend_text_and_its_usage(scripted_server):
    scripted_server.backend.enqueue("Hel", "lo", prompt_tokens=7)
    r = sdk(scripted_server).responses.create(model="anything", input="Say hello")
    assert r.output_text == "Hello" and r.status == "completed" and r.object == "response"
    assert r.id.startswith("resp_") and r.model == "scripted-model" and r.incomplete_details is None
    [message] = r.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_") and message.content[0].type == "output_text" and message.content[0].annotations == []
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (7, 2, 9)
    assert r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.store is False and r.previous_response_id is None and r.tools == [] and r.tool_choice == "auto"
    assert r.parallel_tool_calls is True and r.text.format.type == "text" and r.metadata == {}


def test_echo_fields_repeat_the_request(scripted_server):
    body = {"input": "hi", "instructions": "Be brief.", "max_output_tokens": 30, "temperature": 0.5, "top_p": 0.7,
            "metadata": {"k": "v"}, "reasoning": {"effort": "low"}, "store": False, "parallel_tool_calls": False}
    r = post(scripted_server, body).json()
    assert {k: r[k] for k in ("instructions", "max_output_tokens", "temperature", "top_p", "metadata", "store")} == {
        "instructions": "Be brief.", "max_output_tokens": 30, "temperature": 0.5, "top_p": 0.7, "metadata": {"k": "v"},
        "store": False}
    assert r["reasoning"]["effort"] == "low" and r["parallel_tool_calls"] is False
    req = scripted_server.backend.requests[-1]
    assert (req.max_tokens, req.temperature, req.top_p, req.reasoning_effort) == (30, 0.5, 0.7, "low")


def test_instructions_land_as_the_system_message_with_the_date(scripted_server):
    sdk(scripted_server).responses.create(model="m", input="What day is it?", instructions="Answer in French.")
    messages = scripted_server.backend.requests[-1].messages
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith("Current date and time: ") and messages[0]["content"].endswith("Answer in French.")
    assert messages[1]["content"] == "What day is it?"


def test_input_items_become_the_conversation(scripted_server):
    conversation = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "2+2?"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4", "annotations": []}]},
        {"role": "user", "content": "And 3+3?"},
    ]
    r = sdk(scripted_server).responses.create(model="m", input=conversation)
    messages = scripted_server.backend.requests[-1].messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == ["2+2?", "4", "And 3+3?"] and messages[0]["content"].endswith("Be terse.")
    assert r.output_text == "echo: And 3+3?"


def test_reasoning_comes_as_a_reasoning_item_before_the_message(scripted_server):
    scripted_server.backend.enqueue(Delta(reasoning="Think"), Delta(reasoning="ing."), Delta(content="Answer."))
    r = sdk(scripted_server).responses.create(model="m", input="q")
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_") and reasoning.summary == []
    assert [(c.type, c.text) for c in reasoning.content] == [("reasoning_text", "Thinking.")]
    assert message.type == "message" and r.output_text == "Answer."
    assert r.usage.output_tokens == 3 and r.usage.output_tokens_details.reasoning_tokens == 2


def test_an_earlier_output_goes_back_as_input_unchanged(scripted_server):
    client = sdk(scripted_server)
    scripted_server.backend.enqueue(Delta(reasoning="Count."), Delta(content="Four."))
    first = client.responses.create(model="m", input=[{"role": "user", "content": "2+2?"}])
    client.responses.create(model="m", input=[{"role": "user", "content": "2+2?"}, *first.output,
                                              {"role": "user", "content": "Times two?"}])
    assert scripted_server.backend.requests[-1].messages[1:] == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "Times two?"}]


def test_max_output_tokens_cut_is_incomplete(scripted_server):
    scripted_server.backend.enqueue("a", "b", finish_reason="length")
    r = sdk(scripted_server).responses.create(model="m", input="q", max_output_tokens=2)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].status == "incomplete" and r.output_text == "ab"
    assert scripted_server.backend.requests[-1].max_tokens == 2
    scripted_server.backend.enqueue("a", "b", finish_reason="length")
    events = events_of(post(scripted_server, {"input": "q", "max_output_tokens": 2, "stream": True}).text)
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "incomplete"
    assert events[-2]["item"]["status"] == "incomplete"


# -- the stream ----------------------------------------------------------------------------------------


def test_stream_sends_openais_events_in_order(scripted_server):
    scripted_server.backend.enqueue("Hel", "lo", prompt_tokens=4)
    r = post(scripted_server, {"input": "hi", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r.text)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", *MESSAGE_EVENTS, "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    created, done = events[0]["response"], events[-1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["id"] == done["id"]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    item_id = events[2]["item"]["id"]
    assert all((e["item_id"], e["output_index"], e["content_index"]) == (item_id, 0, 0) for e in deltas)
    assert "".join(e["delta"] for e in deltas) == done["output"][0]["content"][0]["text"] == "Hello"
    assert done["status"] == "completed" and done["usage"]["total_tokens"] == 6


def test_sdk_stream_deltas_join_to_the_completed_text(scripted_server):
    scripted_server.backend.enqueue("The ", "quick ", "fox.")
    events = list(sdk(scripted_server).responses.create(model="m", input="q", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[-1].type == "response.completed" and events[-1].response.output_text == text == "The quick fox."


def test_sdk_stream_helper_gives_the_final_response(scripted_server):
    scripted_server.backend.enqueue(Delta(reasoning="hmm"), "Fine", ", thanks.")
    with sdk(scripted_server).responses.stream(model="m", input="How are you?") as stream:
        seen = [e.type for e in stream]
        final = stream.get_final_response()
    assert final.output_text == "Fine, thanks." and final.output[0].type == "reasoning"
    assert seen[2:8] == ["response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
                         "response.reasoning_text.done", "response.content_part.done", "response.output_item.done"]
    assert "response.output_text.done" in seen and seen[-1] == "response.completed"


def test_an_error_after_the_start_ends_the_stream_with_error_and_failed(scripted_server):
    scripted_server.backend.enqueue("partial", GenerationFailed("Generation failed"))
    events = events_of(post(scripted_server, {"input": "q", "stream": True}).text)
    assert [e["type"] for e in events[-3:]] == ["response.output_item.done", "error", "response.failed"]
    assert events[-2]["code"] == "generation_failed" and events[-2]["message"] == "Generation failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "partial" and failed["output"][0]["status"] == "incomplete"


def tool_delta(pieces: list[dict]) -> Delta:
    d = Delta()
    d.tool_calls = pieces
    return d


def test_tool_call_deltas_become_function_call_items(scripted_server):
    def script():
        scripted_server.backend.enqueue(
            tool_delta([{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]),
            tool_delta([{"index": 0, "function": {"arguments": '{"city": '}}]),
            tool_delta([{"index": 0, "function": {"arguments": '"Paris"}'}}]),
            finish_reason="tool_calls",
        )

    script()
    r = sdk(scripted_server).responses.create(model="m", input="Weather in Paris?")
    [call] = r.output
    assert (call.type, call.call_id, call.name, call.arguments, call.status) == (
        "function_call", "call_1", "get_weather", '{"city": "Paris"}', "completed")
    assert call.id.startswith("fc_") and r.status == "completed"
    script()
    events = events_of(post(scripted_server, {"input": "q", "stream": True}).text)
    assert [e["type"] for e in events][2:] == [
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert events[2]["item"]["arguments"] == "" and events[5]["arguments"] == '{"city": "Paris"}'


# -- refusals --------------------------------------------------------------------------------------------

BAD = [
    ({"model": "m"}, "input"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": [5]}, "input[0]"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}, "input[1].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": 3, "arguments": "{}"}]}, "input[0].name"),
    ({"input": "q", "previous_response_id": "resp_123"}, "previous_response_id"),
    ({"input": "q", "store": True}, "store"),
    ({"input": "q", "background": True}, "background"),
    ({"input": "q", "instructions": 7}, "instructions"),
    ({"input": "q", "temperature": 3}, "temperature"),
    ({"input": "q", "top_p": "high"}, "top_p"),
    ({"input": "q", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "q", "max_output_tokens": 100_000}, "max_output_tokens"),  # above the server's cap (service.build)
    ({"input": "q", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"input": "q", "stream": "yes"}, "stream"),
    ({"input": "q", "metadata": {"k": 1}}, "metadata.k"),
    ({"input": "q", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"input": "q", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"input": "q", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "q", "tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
    ({"input": "q", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"input": "x" * 300_000}, "input"),  # over max_total_chars (service.build)
]


@pytest.mark.parametrize("body, param", BAD, ids=[p for _, p in BAD])
def test_bad_input_is_a_400_naming_the_responses_field(scripted_server, body, param):
    r = post(scripted_server, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"].startswith(f"Invalid '{param}': ") and err["type"] == "invalid_request_error"
    assert scripted_server.backend.requests == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_a_400_naming_input(scripted_server, stream):
    scripted_server.backend.enqueue(ContextLengthExceeded("Prompt is 9000 tokens; the context is 8192", param="messages"))
    r = post(scripted_server, {"input": "q", "stream": stream})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_the_openapi_page_documents_the_responses_body(scripted_server):
    spec = httpx.get(scripted_server.url + "/openapi.json").json()
    schema = spec["paths"]["/v1/responses"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["input"] and {"instructions", "max_output_tokens", "text", "tools"} <= set(schema["properties"])
    assert "$ref" not in json.dumps(schema)


def test_sdk_raises_bad_request_for_previous_response_id(scripted_server):
    with pytest.raises(openai.BadRequestError) as e:
        sdk(scripted_server).responses.create(model="m", input="q", previous_response_id="resp_1")
    assert e.value.param == "previous_response_id" and "no server-side state" in e.value.message


def test_other_methods_get_405_and_stored_responses_404(scripted_server):
    r = httpx.get(scripted_server.url + "/v1/responses")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert httpx.get(scripted_server.url + "/v1/responses/resp_1").status_code == 404


# -- the translation (dict in, dict out) -------------------------------------------------------------------


def test_translation_of_tools_tool_choice_and_text_format():
    body = chat_body({
        "input": "q", "parallel_tool_calls": False,
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True}},
    })
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "description": "d",
                                                              "parameters": {"type": "object"}, "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}} and body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"},
                                                                            "strict": True}}
    assert chat_body({"input": "q", "text": {"format": {"type": "json_object"}}})["response_format"] == {"type": "json_object"}
    assert chat_body({"input": "q", "tool_choice": "required"})["tool_choice"] == "required"


def test_translation_of_function_call_items_and_reasoning():
    body = chat_body({"input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Two calls."}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "w", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "20C"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "25C"}]},
    ]})
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "reasoning": "Two calls.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "w", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "w", "arguments": '{"city":"Rome"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "20C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "25C"}]},
    ]


def test_chat_field_names_map_back_to_responses_names():
    t = translate({"instructions": "s", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "a"}]},
        {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x"}]})
    assert [t.param(p) for p in ("messages", "messages[0].content", "messages[1].content[0].text",
                                 "messages[2].tool_calls[0].function.arguments", "messages[2].tool_calls[0].id",
                                 "messages[3].tool_call_id", "messages[3].content", "max_completion_tokens",
                                 "response_format.json_schema.schema", "tools[1].function.parameters",
                                 "tool_choice.function.name", "temperature")] == [
        "input", "instructions", "input[0].content[0].text", "input[1].arguments", "input[1].call_id",
        "input[2].call_id", "input[2].output", "max_output_tokens", "text.format.schema", "tools[1].parameters",
        "tool_choice.name", "temperature"]
    renamed = t.rename(InvalidRequest("Invalid 'messages[3].content': too long", param="messages[3].content"))
    assert (renamed.param, renamed.message) == ("input[2].output", "Invalid 'input[2].output': too long")


# -- the same gate as the chat route -----------------------------------------------------------------------


def test_the_same_rate_limit_as_the_chat_route():
    app = create_app(make_settings(rate_limit_enabled=True), backend=TimedBackend(0.05), with_ui=False)
    chat = {"messages": [{"role": "user", "content": "hi"}]}

    async def main(url):
        async with httpx.AsyncClient(timeout=30) as c:
            return await asyncio.gather(*[
                c.post(url + ("/v1/responses" if i % 2 else "/v1/chat/completions"), json={"input": "hi"} if i % 2 else chat)
                for i in range(20)])

    with LiveServer(app) as server:
        answers = asyncio.run(main(server.url))
    codes = [a.status_code for a in answers]
    assert set(codes) == {200, 429} and codes.count(200) == 9  # one running + 8 queued, both routes in one line
    refused = [a for i, a in enumerate(answers) if i % 2 and a.status_code == 429]
    assert refused and all(a.json()["error"]["code"] == "rate_limit_exceeded" and int(a.headers["retry-after"]) >= 1
                           for a in refused)
    assert all(a.json()["object"] == "response" for i, a in enumerate(answers) if i % 2 and a.status_code == 200)


def test_a_client_that_leaves_mid_stream_frees_its_slot(scripted_server):
    backend = scripted_server.backend
    backend.enqueue(*[f"w{i} " for i in range(200)], delay=0.02)
    with httpx.Client(timeout=30) as client, client.stream("POST", scripted_server.url + "/v1/responses",
                                                           json={"input": "long", "stream": True}) as r:
        for line in r.iter_lines():
            if '"response.output_text.delta"' in line and line.startswith("data: "):
                break
    deadline = time.monotonic() + 5
    while (backend.running or backend.cancelled == 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.running == 0 and backend.cancelled == 1 and backend.finished == 0
    gate = httpx.get(scripted_server.url + "/api").json()["rate_limit"]
    assert gate.get("requests_running", 0) == 0
    assert sdk(scripted_server).responses.create(model="m", input="again").output_text == "echo: again"


# -- the real embedded model -------------------------------------------------------------------------------


def test_real_model_answers_as_the_chat_route_does(model_server):
    client = sdk(model_server)
    r = client.responses.create(model="m", input="Name three colours.", max_output_tokens=12, temperature=0)
    chat = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Name three colours."}],
                                          max_tokens=12, temperature=0)
    assert r.output_text == chat.choices[0].message.content and r.output_text
    assert r.usage.output_tokens == chat.usage.completion_tokens and r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")


def test_real_model_stream_deltas_join_to_the_final_text(model_server):
    client = sdk(model_server)
    events = list(client.responses.create(model="m", input="Tell me about the sea.", max_output_tokens=16,
                                          temperature=0, stream=True))
    final = events[-1]
    assert final.type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == final.response.output_text
    assert 0 < final.response.usage.output_tokens <= 16
    with client.responses.stream(model="m", input="Say hi.", max_output_tokens=64, temperature=0) as stream:
        seen = list(stream)
    deltas = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    if seen[-1].type == "response.completed":  # the helper's final response needs response.completed
        assert stream.get_final_response().output_text == deltas
    else:
        assert seen[-1].type == "response.incomplete" and seen[-1].response.output_text == deltas


WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
FUNCTION = {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": WEATHER}


@pytest.mark.parametrize("stream", [False, True])
def test_real_model_forced_function_call_validates(model_server, stream):
    import jsonschema

    client = sdk(model_server)
    kw = dict(model="m", input="What is the weather in Paris?", tools=[FUNCTION],
              tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80, temperature=0.7)
    if stream:
        with client.responses.stream(**kw) as s:
            events = list(s)
            r = s.get_final_response()
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    else:
        r = client.responses.create(**kw)
    (call,) = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    if stream:
        assert args == call.arguments  # the streamed pieces join to the item's arguments


def test_real_model_text_format_json_schema_validates(model_server):
    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"], "additionalProperties": False}
    r = sdk(model_server).responses.create(
        model="m", input="Invent a person.", max_output_tokens=60, temperature=0.8,
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
    )
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)
