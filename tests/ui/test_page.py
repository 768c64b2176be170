"""The Gradio page in a real browser: tabs, streaming chat, stop, parameters, docs, gradio_client, iframe."""

from __future__ import annotations

import ast
import json
import re
import shutil
import threading
import time

import httpx
import pytest

from gptoss_space.backends.base import Delta
from gptoss_space.errors import GenerationFailed, Overloaded, RateLimited
from gptoss_space.ui import docs
from gptoss_space.ui.chat import friendly, history_messages
from gptoss_space.ui.parameters import field_range
from gptoss_space.ui.render import THINKING, TOOL_CALL, Turn, render
from tests.support.servers import LiveServer
from tests.support.ui_helpers import (  # noqa: F401  (fixtures)
    FRAME_HTML,
    UI_CAP,
    bot_text,
    browser,
    busy,
    docs_page,
    growth,
    open_page,
    open_tab,
    requires_chromium,
    run_snippet,
    scripted_ui_server,
    send,
    set_number,
    shot,
    ui_server,
    wait_turn,
)

# -- the pieces, without a browser ------------------------------------------------------------


def test_base_url_follows_the_proxy_headers():
    assert docs.base_url({"host": "127.0.0.1:7860"}, "http://x") == "http://127.0.0.1:7860"
    space = {"host": "10.0.0.5:7860", "x-forwarded-proto": "https", "x-forwarded-host": "me-app.hf.space"}
    assert docs.base_url(space, "http://x") == "https://me-app.hf.space"
    assert docs.base_url({"host": "a.example:443", "x-forwarded-proto": "https, http"}, "http://x") == "https://a.example"
    assert docs.base_url({"host": "[::1]:8000"}, "http://x") == "http://[::1]:8000"
    assert docs.base_url({"host": "evil.com/<script>"}, "http://fallback:1") == "http://fallback:1"
    assert docs.base_url({}, "https://fallback") == "https://fallback"


def test_history_keeps_turns_and_drops_thoughts_and_notices():
    history = [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "thinking…", "metadata": {"title": THINKING}},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}], "metadata": None},
        {"role": "assistant", "content": "", "metadata": {"title": "⚠️ Rate limit reached"}},
    ]
    msgs = history_messages(history, "And you?")
    assert [(m.role, m.content) for m in msgs] == [("user", "Hi"), ("assistant", "Hello!"), ("user", "And you?")]


def test_refusals_read_as_advice_with_the_wait():
    assert "Try again in 3 s" in friendly(RateLimited("x", retry_after=2.2))
    assert "busy" in friendly(Overloaded("x", retry_after=5)) and "5 s" in friendly(Overloaded("x", retry_after=5))
    assert "internal" not in friendly(GenerationFailed("internal detail"))
    assert field_range("default_top_p") == (0.0, 1.0, True)


WEATHER_CALL = [  # one call as a backend streams it: id and name first, then the arguments in pieces
    {"index": 0, "id": "call_w1", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
    {"index": 0, "function": {"arguments": '{"city": '}},
    {"index": 0, "function": {"arguments": '"Paris"}'}},
]


def test_tool_calls_render_as_collapsible_blocks_after_the_thinking():
    turn = Turn(status="generating", reasoning="I should look it up.", tool_calls=WEATHER_CALL[:2])
    thinking, call = render(turn)
    assert thinking.metadata["title"] == THINKING and thinking.metadata["status"] == "done"  # a call ends the thinking
    assert call.metadata == {"title": f'{TOOL_CALL}: get_weather({{"city":)', "status": "pending"}  # open while written
    assert call.content == '```\n{"city": \n```'  # not JSON yet: shown as written so far
    turn.tool_calls += WEATHER_CALL[2:] + [
        {"index": 1, "id": "call_t2", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "CET"}'}},
    ]
    turn.status, turn.finish_reason = "done", "tool_calls"
    _, weather, time_call = render(turn, "cut")
    assert weather.metadata == {"title": f'{TOOL_CALL}: get_weather({{"city": "Paris"}})', "status": "done"}
    assert weather.content == '```json\n{\n  "city": "Paris"\n}\n```'
    assert time_call.metadata["title"] == f'{TOOL_CALL}: get_time({{"zone": "CET"}})'


def test_a_turn_of_calls_alone_is_not_empty_and_long_arguments_are_cut_in_the_title():
    args = json.dumps({"text": "x" * 300, "code": "```py\nprint(1)\n```"})
    pieces = [{"index": 0, "id": "c", "type": "function", "function": {"name": "note", "arguments": args}}]
    messages = render(Turn(status="done", tool_calls=pieces, finish_reason="tool_calls"))
    assert len(messages) == 1, "no 'empty answer' notice when the model called a function"
    (call,) = messages
    assert call.metadata["title"].startswith(f"{TOOL_CALL}: note(") and call.metadata["title"].endswith("…)")
    assert len(call.metadata["title"]) < 120
    assert call.content.startswith("````json\n") and call.content.endswith("\n````")  # a fence the arguments cannot close
    assert json.loads(call.content[len("````json"):-len("````")]) == json.loads(args)
    answer_and_call = render(Turn(status="done", content="Let me check.", tool_calls=pieces))
    assert [m.content for m in answer_and_call][0] == "Let me check." and len(answer_and_call) == 2
    assert [m.metadata.get("title") for m in render(Turn(status="generating"))] == ["⚙️ Generating…"]


def test_parameters_table_lists_every_request_field():
    from gptoss_space.settings import Settings

    table = docs.parameters_md(docs.Facts("http://x", "m", Settings()))
    for name in ("messages", "stream", "temperature", "max_tokens", "top_p", "stop", "seed", "presence_penalty",
                 "frequency_penalty", "reasoning_effort", "tools", "tool_choice", "parallel_tool_calls",
                 "response_format", "logprobs", "top_logprobs", "stream_options", "model"):
        assert re.search(rf"^\| `[^`]*\b{name}\b[^`]*` \|", table, re.M), f"{name} is not in the parameters table"


# -- the real model, through the page ---------------------------------------------------------


@requires_chromium
def test_page_has_a_header_and_three_tabs(ui_server, open_page):
    page = open_page(ui_server.url)
    header = page.locator("#gs-header").inner_text()
    assert ui_server.service.model_name in header and "2 req/s" in header and "local" in header
    for name in ("Chat", "Parameters", "API docs"):
        assert page.get_by_role("tab", name=re.compile(name)).count() == 1
    assert page.locator("#gs-chatbot").is_visible()
    shot(page, "desktop-chat-empty")
    open_tab(page, "Parameters")
    assert page.locator("#param-temperature input[type=number]").input_value() == "0.8"
    assert page.locator("#param-top-p input[type=number]").input_value() == "0.9"
    assert page.locator("#param-max-tokens input[type=number]").input_value() == "-1"
    assert page.locator("#param-max-tokens input[type=range]").get_attribute("max") == str(UI_CAP)
    shot(page, "desktop-parameters")


@requires_chromium
def test_chat_streams_text_as_it_is_written(ui_server, open_page):
    page = open_page(ui_server.url)
    n = send(page, "Tell me a story about a lighthouse keeper.")
    deadline = time.monotonic() + 30  # the first words (a loaded machine may take seconds to them)
    while not bot_text(page):
        assert time.monotonic() < deadline, "no text arrived"
        time.sleep(0.05)
    lengths = growth(page, 2.5)
    seen = sorted({x for x in lengths if x > 0})
    assert len(seen) >= 3, f"no streaming seen: {lengths}"
    assert lengths == sorted(lengths), "the answer only grows"
    wait_turn(page, n)
    assert bot_text(page)
    shot(page, "desktop-chat")


@requires_chromium
def test_stop_ends_the_generation(ui_server, open_page):
    service, engine = ui_server.service, ui_server.service.backend.engine
    cancelled = service.usage.cancelled
    page = open_page(ui_server.url)
    send(page, "Write a very long story about a dragon who learns to sing.")
    deadline = time.monotonic() + 30
    while len(set(growth(page, 0.3, every=0.1)) - {0}) < 2:  # it is streaming
        assert time.monotonic() < deadline, "no text arrived"
    page.locator("#gs-input .stop-button").click()
    time.sleep(0.5)
    stopped = bot_text(page)
    time.sleep(1.0)
    assert bot_text(page) == stopped, "text kept growing after Stop"
    assert not busy(page)
    for _ in range(30):
        if engine.active == 0 and service.usage.cancelled == cancelled + 1:
            break
        time.sleep(0.1)
    assert engine.active == 0, "the engine still decodes the stopped row"
    assert service.usage.cancelled == cancelled + 1


@requires_chromium
def test_parameters_take_effect_with_retry_undo_clear_and_examples(ui_server, open_page):
    service = ui_server.service
    page = open_page(ui_server.url)
    open_tab(page, "Parameters")
    set_number(page, "param-max-tokens", 5)
    set_number(page, "param-temperature", 0)
    open_tab(page, "Chat")
    before = service.usage.completion_tokens
    n = send(page, "Tell me about the moon.")
    wait_turn(page, n)
    assert service.usage.completion_tokens - before == 5, "max tokens = 5 is a 5-token answer"
    assert "Cut at your max tokens (5)" in page.locator("#gs-chatbot").inner_text()
    first = bot_text(page)
    assert first
    page.get_by_role("button", name="Retry").click()  # temperature 0: the same answer again
    time.sleep(0.3)
    wait_turn(page, 1)
    assert bot_text(page) == first
    page.get_by_role("button", name="Undo").click()
    page.wait_for_function("() => !document.querySelector('#gs-chatbot .message.user')")
    assert page.locator("#gs-input textarea").input_value() == "Tell me about the moon."
    page.get_by_role("button", name=re.compile("Write a haiku")).click()  # an example runs at once
    wait_turn(page, 1)
    assert "haiku" in page.locator("#gs-chatbot .message.user").inner_text()
    assert bot_text(page)
    page.get_by_role("button", name="Clear").click()
    page.wait_for_function("() => !document.querySelector('#gs-chatbot .message')")


@requires_chromium
def test_docs_show_this_servers_url(ui_server, docs_page):
    assert docs_page["base"] == ui_server.url
    facts = docs.Facts(docs_page["base"], ui_server.service.model_name, ui_server.settings)
    expected = {s.key: s.code for s in docs.snippets(facts)}
    assert set(docs_page["codes"]) == set(expected)
    for key, code in expected.items():
        assert docs_page["codes"][key].rstrip() == code.rstrip(), f"{key} on the page differs from the docs module"
    text = docs_page["page"].locator(".gs-docs").inner_text()
    assert f"{ui_server.url}/api" in text and "GET" in text
    assert f"cap of {UI_CAP}" in text and "500 ms" in text


@requires_chromium
@pytest.mark.parametrize("key", ["curl", "curl_stream", "python", "python_stream", "openai", "openai_responses", "openai_tools",
                                 "openai_json", "openai_logprobs", "js", "js_stream", "gradio"])
def test_documented_snippet_runs_as_written(ui_server, docs_page, key, tmp_path):
    if key.startswith("js") and not shutil.which("node"):
        pytest.skip("node is not installed")
    code = docs.snippet(docs.Facts(docs_page["base"], ui_server.service.model_name, ui_server.settings), key).code
    out = run_snippet(key, code, tmp_path)
    if key == "curl":
        assert json.loads(out)["choices"][0]["message"]["content"]
    elif key == "curl_stream":
        assert out.rstrip().endswith("data: [DONE]") and '"delta"' in out
    elif key == "openai_tools":  # the forced call: its name, then arguments that follow the schema
        name, arguments = out.strip().split(" ", 1)
        assert name == "get_weather"
        assert list(json.loads(arguments)) == ["city"] and 0 < len(json.loads(arguments)["city"]) <= 40
    elif key == "openai_json":
        person = ast.literal_eval(out.strip())
        assert set(person) == {"name", "age"} and isinstance(person["name"], str) and 0 <= person["age"] <= 120
    elif key == "openai_logprobs":  # one line per answer token: its logprob, then 3 alternatives with theirs
        lines = out.strip().splitlines()
        assert 1 <= len(lines) <= 16
        for line in lines:
            numbers = [float(x) for x in re.findall(r"['\"] +(-?\d+\.\d+)", line)]
            assert len(numbers) == 4 and all(x <= 0 for x in numbers), line
    else:
        assert out.strip(), f"{key} printed nothing"


@requires_chromium
def test_try_it_panel_shows_the_raw_stream(ui_server, docs_page):
    page = docs_page["page"]
    page.locator("#tryit-send").click()
    page.wait_for_function("() => document.querySelector('#tryit-out').textContent.includes('(done in')", timeout=60_000)
    out = page.locator("#tryit-out").inner_text()
    assert "HTTP 200" in out and "x-ratelimit-limit" in out
    assert "data: [DONE]" in out and '"chat.completion.chunk"' in out
    shot(page, "desktop-docs-tryit")


def test_gradio_client_calls_the_chat_endpoint(ui_server):
    from gradio_client import Client

    client = Client(ui_server.url + "/", verbose=False)
    answer = client.predict("Say hello.", api_name="/chat")
    assert isinstance(answer, str) and answer.strip()
    short = client.predict("Say hello.", max_tokens=3, temperature=0.0, api_name="/chat")
    assert short and len(short) < len(answer) + 1 and len(short.split()) <= 4


@requires_chromium
def test_chat_works_inside_a_cross_origin_iframe(ui_server, open_page):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    r = httpx.get(ui_server.url + "/")
    assert "x-frame-options" not in r.headers
    assert "frame-ancestors" not in r.headers.get("content-security-policy", "")
    html = FRAME_HTML.format(src=ui_server.url + "/")
    site = Starlette(routes=[Route("/", lambda request: HTMLResponse(html))])
    with LiveServer(site, host="127.0.0.2", lifespan="off") as other:
        # A fresh context is incognito-like: third-party storage is blocked inside the frame, as in
        # many visitors' browsers; the page must load and chat all the same.
        page = open_page(other.url, width=520, height=900, wait_for="iframe")
        frame = page.frame_locator("iframe")
        frame.locator("#gs-chatbot").wait_for(timeout=30_000)
        n = send(frame, "Hello from another site!")
        wait_turn(frame, n)
        assert bot_text(frame)
        shot(page, "iframe", full_page=False)


@requires_chromium
def test_phone_width_has_no_sideways_scroll(ui_server, open_page):
    page = open_page(ui_server.url, width=390, height=844)
    wide = "() => document.documentElement.scrollWidth"
    assert page.evaluate(wide) <= 390
    shot(page, "phone-chat")
    for tab, name in (("Parameters", "phone-parameters"), ("API docs", "phone-docs")):
        open_tab(page, tab)
        page.wait_for_timeout(400)
        assert page.evaluate(wide) <= 390, f"{tab} scrolls sideways at 390 px"
        shot(page, name)


# -- the scripted backend: thinking, history, refusals ------------------------------------------


@requires_chromium
def test_reasoning_shows_as_a_collapsed_thinking_section(scripted_ui_server, open_page):
    backend = scripted_ui_server.backend
    backend.harmony = True
    backend.enqueue(Delta(reasoning="Let me think "), Delta(reasoning="about it."), "The answer", " is 42.", delay=0.3)
    page = open_page(scripted_ui_server.url)
    n = send(page, "What is the answer?")
    page.locator("#gs-chatbot .thought-group", has_text="Let me think").wait_for()  # open while thinking
    assert busy(page)
    wait_turn(page, n)
    bot = page.locator("#gs-chatbot .message.bot").last
    assert THINKING in bot.locator(".thought-group").inner_text()
    assert "Let me think" not in bot.inner_text(), "the thinking collapses once the answer is there"
    assert bot_text(page) == "The answer is 42."
    order = bot.evaluate("b => [...b.querySelectorAll('.thought-group, .message-content')].map(e => e.className)")
    assert "thought-group" in order[0], "the thinking is above the answer"
    shot(page, "desktop-thinking")
    n = send(page, "And why?")
    wait_turn(page, n)
    turns = [(m["role"], m["content"]) for m in backend.requests[-1].messages]
    assert turns[-3:] == [("user", "What is the answer?"), ("assistant", "The answer is 42."), ("user", "And why?")]
    open_tab(page, "Parameters")
    assert "gpt-oss (harmony) model" in page.locator("#param-effort").inner_text()


@requires_chromium
def test_tool_calls_show_as_collapsed_blocks(scripted_ui_server, open_page):
    backend = scripted_ui_server.backend
    pieces = [Delta(tool_calls=[p]) for p in WEATHER_CALL]
    backend.enqueue(Delta(reasoning="The user wants the weather. "), *pieces, finish_reason="tool_calls", delay=0.4)
    page = open_page(scripted_ui_server.url)
    n = send(page, "What's the weather in Paris?")
    call = page.locator("#gs-chatbot .message.bot .thought-group", has_text=f"{TOOL_CALL}: get_weather")
    call.wait_for()  # shown while its arguments still arrive
    wait_turn(page, n)
    bot = page.locator("#gs-chatbot .message.bot").last
    titles = bot.locator(".thought-group > [role=button]").all_inner_texts()
    assert len(titles) == 2 and THINKING in titles[0], titles  # the thinking, then the call
    assert f'{TOOL_CALL}: get_weather({{"city": "Paris"}})' in titles[1]
    assert "empty answer" not in bot.inner_text()
    from playwright.sync_api import expect

    # The call collapses once the turn is done (the page re-renders a moment after the last update).
    expect(call.locator("pre")).to_have_count(0, timeout=5_000)
    call.locator("> [role=button]").click()
    call.locator("pre").wait_for()
    assert json.loads(call.locator("pre").inner_text()) == {"city": "Paris"}  # the arguments, as indented JSON
    page.wait_for_timeout(300)  # the block's opening animation
    shot(page, "desktop-tool-call")
    n = send(page, "Thanks!")
    wait_turn(page, n)
    turns = [(m["role"], m["content"]) for m in backend.requests[-1].messages]
    assert turns[-2:] == [("user", "What's the weather in Paris?"), ("user", "Thanks!")]  # a call is not a turn


@requires_chromium
def test_refusals_and_failures_are_friendly(scripted_ui_server, open_page):
    backend = scripted_ui_server.backend
    page = open_page(scripted_ui_server.url, width=390, height=844)
    backend.enqueue(*["word "] * 12, delay=0.25)  # holds this client's only slot for ~3 s
    holder = threading.Thread(
        target=httpx.post,
        args=(scripted_ui_server.url + "/api",),
        kwargs={"json": {"messages": [{"role": "user", "content": "hold"}]}, "timeout": 30},
    )
    holder.start()
    time.sleep(0.5)
    n = send(page, "Am I rate limited?")
    page.locator(".toast-body").first.wait_for(timeout=10_000)
    toast = page.locator(".toast-body").first.inner_text()
    assert re.search(r"Try again in \d+ s", toast), toast
    wait_turn(page, n)
    assert "Rate limit reached" in page.locator("#gs-chatbot").inner_text()
    shot(page, "phone-rate-limited", full_page=False)
    holder.join()
    time.sleep(0.6)
    backend.enqueue("partial answer", GenerationFailed("secret internals"), delay=0.05)
    n = send(page, "Fail, please.")
    wait_turn(page, n)
    chat = page.locator("#gs-chatbot").inner_text()
    assert "partial answer" in chat and "could not answer" in chat
    body = page.locator("body").inner_text()
    assert "secret internals" not in body and "Traceback" not in body
