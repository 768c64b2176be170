"""response_format through the official openai SDK, the real embedded model behind a real server.

json_schema answers (required properties, an enum, a bounded integer), streamed and not, parse
with json.loads and validate with jsonschema; json_object answers parse to an object; a schema
that cannot compile and a malformed response_format are 400s naming response_format; the proxy
forwards response_format unchanged.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_space.backends.proxy.backend import ProxyBackend
from gptoss_space.errors import InvalidRequest
from gptoss_space.protocol.request import validate_request
from gptoss_space.service import ChatService
from tests.conftest import make_settings

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
        "continent": {"enum": ["Europe", "Asia", "Africa", "America", "Oceania"]},
    },
    "required": ["city", "population_millions", "continent"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "city_facts", "schema": SCHEMA, "strict": True}}
ASK = [{"role": "user", "content": "Describe Paris as JSON with city, population_millions and continent."}]


@pytest.fixture(scope="module")
def client(model_server):
    return openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_json_schema_answer_validates(client, temperature):
    r = client.chat.completions.create(
        model="any", messages=ASK, response_format=FORMAT, temperature=temperature, seed=11, max_tokens=120
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_schema_stream_validates_and_matches_usage(client):
    stream = client.chat.completions.create(
        model="any", messages=ASK, response_format=FORMAT, temperature=0.7, seed=5, max_tokens=120,
        stream=True, stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    text = "".join(pieces)
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), SCHEMA)
    assert usage is not None and usage.completion_tokens > 5
    assert sum(1 for p in pieces if p) > 3  # streamed in pieces, not in one block


def test_json_object_answer_parses_to_an_object(client):
    r = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": "Give a JSON object with the name and age of a cat."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=200,
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # a free-form object may run to max_tokens (OpenAI answers "length" too); its start is still one
        assert r.choices[0].message.content.startswith("{")


def test_text_format_is_free_text(client):
    r = client.chat.completions.create(
        model="any", messages=ASK, response_format={"type": "text"}, temperature=0, max_tokens=12
    )
    assert r.choices[0].message.content


@pytest.mark.parametrize(
    "schema",
    [{"type": "nope"}, {"$ref": "#/$defs/missing"}, {"type": "array", "uniqueItems": True}, {"type": "string", "format": "weird"}],
)
def test_schema_that_cannot_compile_is_400_naming_response_format(client, schema):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="any", messages=ASK, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        )
    assert e.value.status_code == 400
    assert e.value.body["param"] == "response_format" and "response_format" in e.value.body["message"]


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": "xml"},
        {},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {"schema": SCHEMA}},  # no name
        {"type": "json_schema", "json_schema": {"name": "has space", "schema": SCHEMA}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": "yes"}},
        "json",
        [],
    ],
)
def test_malformed_response_format_is_400(model_server, fmt):
    r = httpx.post(model_server.url + "/v1/chat/completions", json={"messages": ASK, "response_format": fmt, "stream": False})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "response_format"


def test_a_large_schema_is_checked_off_the_event_loop_and_still_400(model_server):
    """Past INLINE_CHECK_CHARS the compile runs in the backend's worker thread: the fault is still a 400."""
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(800)}, "required": ["p1"]}
    schema["properties"]["bad"] = {"type": "nope"}
    t0 = time.perf_counter()
    r = httpx.post(model_server.url + "/v1/chat/completions", timeout=60, json={
        "messages": ASK, "stream": True, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    })
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text
    assert time.perf_counter() - t0 < 30


def test_proxy_forwards_response_format_unchanged():
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True, "x-vendor": 1}}
    chat = validate_request({"messages": ASK, "response_format": fmt}, stream_default=False)
    backend = ProxyBackend(make_settings(upstream_url="http://127.0.0.1:9"))
    service = ChatService(make_settings(upstream_url="http://127.0.0.1:9"), backend, gate=None)
    req = service.build(chat)
    assert req.grammar is None  # the upstream enforces it, not us
    assert backend.body(req)["response_format"] == fmt
    plain = service.build(validate_request({"messages": ASK}, stream_default=False))
    assert "response_format" not in backend.body(plain)


# -- gpt-oss (harmony): the grammar binds the final channel, the analysis runs free ------------------


@pytest.fixture(scope="module")
def gptoss_server(tmp_path_factory):
    from gptoss_space.http.app import create_app
    from tests.support.servers import LiveServer
    from tests.support.tiny_models import build_tiny_gpt_oss

    path = build_tiny_gpt_oss(tmp_path_factory.mktemp("tiny-gpt-oss-format"), scripted=True)
    app = create_app(make_settings(model=str(path), model_name="gpt-oss-tiny"), with_ui=False)
    with LiveServer(app, ready_path="/api") as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_gpt_oss_answer_follows_the_schema_and_keeps_its_reasoning(gptoss_server, stream):
    from tests.support.tiny_models import SCRIPT_REASONING

    schema = {"type": "object", "properties": {"digit": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["digit"],
              "additionalProperties": False}
    client = openai.OpenAI(base_url=gptoss_server.url + "/v1", api_key="unused", max_retries=0)
    kw = dict(model="gpt-oss-tiny", messages=[{"role": "user", "content": "Hello!"}], temperature=0, max_tokens=80,
              response_format={"type": "json_schema", "json_schema": {"name": "d", "schema": schema}})
    if stream:
        content, reasoning, finish = "", "", None
        for chunk in client.chat.completions.create(stream=True, **kw):
            for c in chunk.choices:
                content += c.delta.content or ""
                reasoning += getattr(c.delta, "reasoning_content", None) or getattr(c.delta, "reasoning", None) or ""
                finish = c.finish_reason or finish
    else:
        r = client.chat.completions.create(**kw)
        content, finish = r.choices[0].message.content, r.choices[0].finish_reason
        reasoning = r.choices[0].message.model_extra.get("reasoning_content")
    assert finish == "stop", content
    jsonschema.validate(json.loads(content), schema)  # the scripted model would have written "Hello from gpt-oss!"
    assert reasoning == SCRIPT_REASONING  # the analysis channel was not constrained


# -- compiling whatever schema a client sends: a grammar or a 400, never another error --------------

keywords = st.sampled_from(
    ["type", "properties", "required", "items", "enum", "const", "minimum", "maximum", "minLength", "maxLength",
     "pattern", "format", "anyOf", "oneOf", "allOf", "$ref", "$defs", "additionalProperties", "minItems", "uniqueItems"]
)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=6)
    | st.sampled_from(["object", "string", "integer", "array", "number", "#", "#/$defs/a", "date-time", "^a+$", "[", "(?<=x)"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keywords | st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
schemas = st.dictionaries(keywords, values, max_size=5)


@settings(max_examples=300, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(schema=schemas)
def test_any_schema_compiles_or_is_refused_naming_response_format(schema):
    body = {"messages": ASK, "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": schema}}}
    chat = validate_request(body, stream_default=False)
    try:
        grammar = chat.grammar()
    except InvalidRequest as e:
        assert e.param == "response_format" and e.message.startswith("Invalid 'response_format': ")
    else:
        assert grammar.startswith("start: %json ")
