"""Logprobs: the computation in sampling.py, the token bytes, and the real models behind real servers through the openai SDK."""

from __future__ import annotations

import json
import math
import time

import httpx
import openai
import pytest
import torch

from gptoss_space.backends.local.sampling import LOGPROB_FLOOR, Sampler, choose
from gptoss_space.backends.local.token_logprobs import TokenBytes
from gptoss_space.http.app import create_app
from tests.conftest import make_settings
from tests.support.servers import LiveServer
from tests.support.sse_client import parse_events
from tests.support.tiny_models import SCRIPT_CONTENT, build_tiny_gpt_oss

Q = [{"role": "user", "content": "What is the capital of France?"}]


def logits_of(rows: int = 3, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


# -- the computation ------------------------------------------------------------------------------


def test_greedy_logprobs_are_the_log_softmax_of_the_logits():
    logits = logits_of()
    samplers = [Sampler(temperature=0, top_logprobs=4) for _ in range(3)]
    tokens = choose(logits, samplers)
    expected = torch.log_softmax(logits, -1)
    for row, (s, token) in enumerate(zip(samplers, tokens)):
        (record,) = s.records
        assert record.token == token == int(logits[row].argmax())
        assert record.logprob == pytest.approx(float(expected[row, token]), abs=1e-5)
        ids = [i for i, _ in record.top]
        values = [v for _, v in record.top]
        assert ids == expected[row].topk(4).indices.tolist() and values == sorted(values, reverse=True)
        assert values == pytest.approx(expected[row, ids].tolist(), abs=1e-5)
        assert ids[0] == token and values[0] == pytest.approx(record.logprob)  # greedy: the chosen one leads
        assert sum(math.exp(v) for v in values) <= 1 + 1e-5


def test_temperature_and_penalties_shape_the_reported_distribution():
    logits = logits_of(rows=2, seed=1)
    hot = Sampler(temperature=1.7, top_p=1.0, seed=5, top_logprobs=20, presence_penalty=1.5, frequency_penalty=0.5)
    hot.counts = {3: 2, 7: 1}
    cold = Sampler(temperature=0.3, top_p=1.0, seed=5, top_logprobs=20)
    tokens = choose(logits, [hot, cold])
    penalized = logits[0].clone()
    penalized[3] -= 1.5 + 0.5 * 2
    penalized[7] -= 1.5 + 0.5 * 1
    for s, x, token in ((hot, penalized / 1.7, tokens[0]), (cold, logits[1] / 0.3, tokens[1])):
        record = s.records[0]
        expected = torch.log_softmax(x, -1)
        assert record.logprob == pytest.approx(float(expected[token]), abs=1e-5)
        assert [v for _, v in record.top] == pytest.approx(expected.topk(20).values.tolist(), abs=1e-5)
        top = dict(record.top)
        if token in top:
            assert top[token] == pytest.approx(record.logprob)
    spread = lambda s: s.records[0].top[0][1] - s.records[0].top[-1][1]  # noqa: E731
    assert spread(cold) > spread(hot)  # a low temperature sharpens what is reported
    # The penalized ids fell from the raw distribution's places.
    raw = torch.log_softmax(logits[0], -1)
    assert dict(hot.records[0].top).get(3, -1e9) < float(raw[3]) or 3 not in dict(hot.records[0].top)


def test_top_p_reports_the_distribution_before_the_nucleus_cut():
    logits = torch.tensor([[4.0, 3.9, 3.8, 0.0, -1.0, -2.0]])
    s = Sampler(temperature=1.0, top_p=0.3, seed=0, top_logprobs=6)
    (token,) = choose(logits, [s])
    assert token in (0, 1)  # the nucleus of 0.3 holds the two most likely ids
    expected = torch.log_softmax(logits[0], -1)
    assert [v for _, v in s.records[0].top] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-6)
    assert all(math.isfinite(v) for _, v in s.records[0].top)


def test_rows_that_do_not_ask_get_nothing_and_sampling_is_unchanged():
    logits = logits_of(rows=4, seed=2)
    plain = [Sampler(1.0, 0.9, seed=11), Sampler(0), Sampler(0.7, 1.0, seed=12), Sampler(1.2, 0.95, seed=13)]
    asking = [Sampler(1.0, 0.9, seed=11, top_logprobs=3), Sampler(0), Sampler(0.7, 1.0, seed=12, top_logprobs=0),
              Sampler(1.2, 0.95, seed=13)]
    assert choose(logits, plain) == choose(logits, asking)
    assert [len(s.records) for s in asking] == [1, 0, 1, 0] and not any(s.records for s in plain)
    assert asking[2].records[0].top == []  # top_logprobs 0: the chosen token's logprob only


def test_a_masked_token_is_reported_as_the_floor_never_minus_infinity():
    logits = torch.tensor([[2.0, float("-inf"), 1.0]])
    s = Sampler(temperature=0, top_logprobs=3)
    choose(logits, [s])
    assert [v for _, v in s.records[0].top][-1] == LOGPROB_FLOOR


# -- token bytes ------------------------------------------------------------------------------------


def test_token_bytes_are_exact_for_partial_characters(model_server):
    tokenizer = model_server.service.backend.loaded.tokenizer
    table = TokenBytes(tokenizer)
    text = "Caf\u00e9 \U0001f60a \u6771\u4eac"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = [table(i) for i in ids]
    assert b"".join(bytes(b) for _, b in pieces) == text.encode()
    assert any("\\x" in t for t, _ in pieces)  # the emoji is split: its pieces are written as escapes
    assert all(t.encode() == bytes(b) for t, b in pieces if "\\x" not in t)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert table(eos) == ("<|im_end|>", [])  # a skipped special token adds no bytes


# -- the embedded model through the openai SDK -----------------------------------------------------


@pytest.fixture(scope="module")
def client(model_server):
    return openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused")


def check_entries(entries, top: int) -> None:
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == top
        values = [t.logprob for t in e.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert e.token == bytes(e.bytes).decode("utf-8", "backslashreplace")
        alt = {t.token: t.logprob for t in e.top_logprobs}
        if e.token in alt:
            assert alt[e.token] == pytest.approx(e.logprob, abs=1e-6)
        else:
            assert e.logprob <= values[-1] + 1e-6  # not among the top: less likely than all of them


def joined(entries) -> str:
    return b"".join(bytes(e.bytes) for e in entries).decode()


def test_non_streamed_logprobs_number_the_completion_tokens(client):
    done = client.chat.completions.create(model="m", messages=Q, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5)
    entries = done.choices[0].logprobs.content
    assert len(entries) == done.usage.completion_tokens >= 5
    assert joined(entries) == done.choices[0].message.content
    check_entries(entries, 5)
    assert all(e.top_logprobs[0].token == e.token for e in entries)  # greedy: each token was the most likely
    assert done.choices[0].logprobs.refusal is None


def test_streamed_logprobs_ride_with_their_deltas(client):
    stream = client.chat.completions.create(
        model="m", messages=Q, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5,
        stream=True, stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens >= 5
    assert joined(entries) == text
    check_entries(entries, 5)
    for c in chunks:
        if c.choices and c.choices[0].delta.content:
            assert c.choices[0].logprobs.content  # each piece of text brings its tokens


def test_sampled_logprobs_and_a_stop_sequence(client):
    kwargs = dict(model="m", messages=Q, max_tokens=24, temperature=1.1, top_p=0.95, seed=7)
    done = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2)
    entries = done.choices[0].logprobs.content
    assert len(entries) == done.usage.completion_tokens and joined(entries) == done.choices[0].message.content
    check_entries(entries, 2)
    stopped = client.chat.completions.create(
        model="m", messages=Q, max_tokens=30, temperature=0, stop=["Paris"], logprobs=True,
    )
    entries = stopped.choices[0].logprobs.content
    assert stopped.choices[0].finish_reason == "stop" and len(entries) == stopped.usage.completion_tokens
    tokens_text = joined(entries)
    assert tokens_text.startswith(stopped.choices[0].message.content) and "Paris" in tokens_text  # the stop's tokens count
    assert all(e.top_logprobs == [] for e in entries)
    chunks = list(client.chat.completions.create(
        model="m", messages=Q, max_tokens=30, temperature=0, stop=["Paris"], logprobs=True,
        stream=True, stream_options={"include_usage": True},
    ))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(streamed) == chunks[-1].usage.completion_tokens and joined(streamed) == tokens_text


def test_not_asked_means_no_logprobs(client):
    done = client.chat.completions.create(model="m", messages=Q, max_tokens=3, temperature=0)
    assert done.choices[0].logprobs is None


def test_bad_logprobs_fields_are_400s_naming_them(client):
    for kwargs in ({"logprobs": True, "top_logprobs": 21}, {"top_logprobs": 3}, {"logprobs": False, "top_logprobs": 1},
                   {"logprobs": True, "top_logprobs": -1}):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="m", messages=Q, max_tokens=3, **kwargs)
        assert err.value.status_code == 400 and err.value.body["param"] == "top_logprobs", kwargs
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="m", messages=Q, max_tokens=3, logprobs="yes")
    assert err.value.body["param"] == "logprobs"


def test_the_seed_route_has_the_same_shape(model_server):
    body = {"messages": Q, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 1}
    done = httpx.post(model_server.url + "/api", json={**body, "stream": False}, timeout=120).json()
    logprobs = done["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None and len(logprobs["content"]) == done["usage"]["completion_tokens"] == 5
    assert set(logprobs["content"][0]) == {"token", "logprob", "bytes", "top_logprobs"}
    events = parse_events(httpx.post(model_server.url + "/api", json=body, timeout=120).text)
    streamed = [e for ev in events if isinstance(ev, dict) and ev.get("choices") and ev["choices"][0].get("logprobs")
                for e in ev["choices"][0]["logprobs"]["content"]]
    assert streamed == logprobs["content"]


# -- gpt-oss: only the answer's tokens ----------------------------------------------------------


def test_gpt_oss_reports_the_final_channel_tokens_only(tmp_path):
    path = build_tiny_gpt_oss(tmp_path / "scripted", scripted=True)
    app = create_app(make_settings(model=str(path), model_name="gpt-oss-tiny"), with_ui=False)
    with LiveServer(app, ready_path="/api") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        done = client.chat.completions.create(model="m", messages=Q, temperature=0, logprobs=True, top_logprobs=3)
        stream = client.chat.completions.create(model="m", messages=Q, temperature=0, logprobs=True, stream=True)
        chunks = list(stream)
    entries = done.choices[0].logprobs.content
    assert done.choices[0].message.content == SCRIPT_CONTENT == joined(entries)
    assert 0 < len(entries) < done.usage.completion_tokens  # the analysis and the format's tokens have none
    check_entries(entries, 3)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert joined(streamed) == SCRIPT_CONTENT and len(streamed) == len(entries)


# -- proxy mode: asked upstream, mapped back ------------------------------------------------------


def test_the_proxy_forwards_logprobs_and_maps_them_back(model_server):
    from tests.backends.proxy.test_proxy_app import proxy_server

    kwargs = dict(model="m", messages=Q, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    direct = openai.OpenAI(base_url=model_server.url + "/v1", api_key="unused")
    url = model_server.url + "/v1/chat/completions"
    with proxy_server(url, inject_datetime=False, upstream_model="", upstream_read_timeout_s=60) as server:
        proxied = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        for _ in range(3):
            minute = time.gmtime().tm_min  # the model's server injects the date: the prompt changes each minute
            want, got = direct.chat.completions.create(**kwargs), proxied.chat.completions.create(**kwargs)
            chunks = list(proxied.chat.completions.create(**kwargs, stream=True))
            if time.gmtime().tm_min == minute:
                break
    entries = got.choices[0].logprobs.content
    assert [e.token for e in entries] == [e.token for e in want.choices[0].logprobs.content]
    assert len(entries) == got.usage.completion_tokens and joined(entries) == got.choices[0].message.content
    check_entries(entries, 3)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-4)


@pytest.mark.parametrize("as_json", [False, True], ids=["sse", "json"])
def test_the_proxy_passes_only_well_formed_upstream_entries(as_json):
    from tests.backends.proxy.test_proxy_app import proxy_server
    from tests.support.upstream import Reply, Upstream

    good = {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]},
                                                                                 {"token": "x", "logprob": "high"}]}
    hostile = [good, {"token": 5, "logprob": -1.0}, {"token": "!", "logprob": -0.1, "bytes": [999], "extra": "<script>"},
               "nonsense", {"token": "?", "logprob": True}]
    key = "message" if as_json else "delta"
    chunk = {"choices": [{"index": 0, key: {"content": "Hi!"}, "logprobs": {"content": hostile}, "finish_reason": "stop"}]}
    body = json.dumps(chunk).encode() if as_json else f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    ctype = "application/json" if as_json else "text/event-stream"
    with Upstream(Reply(body=body, content_type=ctype)) as up, proxy_server(up.url) as server:
        r = httpx.post(server.url + "/v1/chat/completions", json={"messages": Q, "logprobs": True, "top_logprobs": 2}, timeout=30)
        sent = up.requests[0].json
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert r.json()["choices"][0]["logprobs"]["content"] == [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]},
        {"token": "!", "logprob": -0.1, "bytes": None, "top_logprobs": []},
    ]


# -- ZeroGPU: the records cross the worker's process boundary -------------------------------------


def test_zerogpu_records_cross_the_process_boundary(monkeypatch):
    import asyncio
    import pickle

    from gptoss_space.backends.base import GenerationRequest
    from gptoss_space.backends.local.backend import LocalBackend
    from tests.backends.local.test_zerogpu import FakeSpaces

    class PicklingSpaces(FakeSpaces):
        """As in ZeroGPU's forked worker: the arguments and every yielded item are pickled copies."""

        def GPU(self, task=None, *, duration=None):  # noqa: N802
            def wrap(fn):
                def run(*args, **kwargs):
                    args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                    for item in fn(*args, **kwargs):
                        yield pickle.loads(pickle.dumps(item))

                return run

            return wrap(task) if task is not None else wrap

    spaces = PicklingSpaces()
    monkeypatch.setattr("gptoss_space.backends.local.zerogpu.spaces_module", lambda s: spaces if s.zero_gpu else None)
    monkeypatch.setattr("gptoss_space.backends.local.backend.spaces_module", lambda s: spaces if s.zero_gpu else None)
    backend = LocalBackend(make_settings(zero_gpu=True))

    async def main():
        await backend.start()
        try:
            return [d async for d in backend.stream(GenerationRequest(Q, 8, temperature=0, logprobs=True, top_logprobs=2))]
        finally:
            await backend.close()

    deltas = asyncio.run(main())
    entries = [e for d in deltas if d.logprobs for e in d.logprobs]
    assert len(entries) == deltas[-1].completion_tokens >= 1 and deltas[-1].logprobs == []
    assert b"".join(bytes(e["bytes"]) for e in entries).decode() == "".join(d.content for d in deltas)
    assert all(len(e["top_logprobs"]) == 2 and e["top_logprobs"][0]["token"] == e["token"] for e in entries)
