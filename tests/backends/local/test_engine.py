"""The continuous-batching engine with the real embedded SmolLM2: batching never changes a row's output.

fp32 where outputs must match exactly (batched vs alone, joining mid-decode, seeds); bf16 (what
the server runs on this CPU) is checked against transformers for near-equality. Both runners:
the lean Llama runner and transformers' own forward.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from gptoss_space.backends.local.engine import Engine, Sequence, _groups
from gptoss_space.backends.local.loading import load_model
from gptoss_space.backends.local.runners import llama_runner
from gptoss_space.backends.local.sampling import Sampler, _nucleus, choose
from tests.conftest import make_settings

MAX_NEW = 8
QUESTIONS = ["What is the capital of France?", "Name three colours of the rainbow, please.", "Hi", "Count from one to ten."]


@pytest.fixture(scope="module")
def fp32():
    return load_model(make_settings(dtype="float32"))


@pytest.fixture(scope="module")
def bf16():
    return load_model(make_settings(dtype="bfloat16"))


def prompts(loaded) -> list[list[int]]:
    tok = loaded.tokenizer
    return [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_dict=True)["input_ids"] for q in QUESTIONS]


def engine_for(loaded, runner: str, **kw) -> Engine:
    eos = {loaded.tokenizer.eos_token_id}
    return Engine(loaded.model, eos_ids=eos, max_batch_size=8, max_context=8192, pad_id=loaded.tokenizer.eos_token_id, runner=runner, **kw)


class Run:
    """One request's outcome, collected from the engine thread's callbacks."""

    def __init__(self, prompt: list[int], max_new: int = MAX_NEW, sampler: Sampler | None = None):
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.seq = Sequence(
            prompt_ids=prompt,
            max_new_tokens=max_new,
            sampler=sampler or Sampler(temperature=0),
            on_token=lambda t: self.tokens.append(t) and False,
            on_finish=self._finish,
            on_error=self._error,
        )

    def _finish(self, reason: str, n: int) -> None:
        self.reason = reason
        self.done.set()

    def _error(self, e: BaseException) -> None:
        self.error = e
        self.done.set()

    def wait(self, timeout: float = 120) -> Run:
        assert self.done.wait(timeout), "the engine never finished this request"
        return self


def run_all(engine: Engine, runs: list[Run]) -> list[list[int]]:
    for r in runs:
        engine.submit(r.seq)
    return [r.wait().tokens for r in runs]


@pytest.fixture(params=["lean", "transformers"])
def runner(request):
    return request.param


def test_lean_runner_is_chosen_for_the_embedded_model(bf16):
    assert llama_runner.supports(bf16.model)
    assert type(engine_for(bf16, "auto").runner).__name__ == "LlamaRunner"
    assert type(engine_for(bf16, "transformers").runner).__name__ == "HFRunner"


def test_alone_matches_transformers_generate_fp32(fp32, runner):
    engine = engine_for(fp32, runner)
    engine.start()
    try:
        for ids in prompts(fp32)[:2]:
            x = torch.tensor([ids])
            ref = fp32.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False)
            expected = [t for t in ref[0, len(ids):].tolist() if t != fp32.tokenizer.eos_token_id]
            assert run_all(engine, [Run(ids)])[0] == expected
    finally:
        engine.stop()


def test_batched_greedy_equals_alone(fp32, runner):
    engine = engine_for(fp32, runner)
    engine.start()
    try:
        alone = [run_all(engine, [Run(p)])[0] for p in prompts(fp32)]
        together = run_all(engine, [Run(p) for p in prompts(fp32)])
    finally:
        engine.stop()
    assert together == alone


def test_rows_joining_mid_decode_keep_their_outputs(fp32, runner):
    engine = engine_for(fp32, runner)
    engine.start()
    try:
        ps = prompts(fp32)
        alone = [run_all(engine, [Run(p, 24)])[0] for p in ps[:3]]
        # A short prompt first; a longer one joins after a few steps (the cache shifts), then another.
        first = Run(ps[2], 24)
        engine.submit(first.seq)
        while len(first.tokens) < 3 and not first.done.is_set():
            time.sleep(0.005)
        second, third = Run(ps[1], 24), Run(ps[0], 24)
        engine.submit(second.seq)
        while len(second.tokens) < 2 and not second.done.is_set():
            time.sleep(0.005)
        engine.submit(third.seq)
        got = [r.wait().tokens for r in (third, second, first)]
    finally:
        engine.stop()
    assert got == alone


def test_bf16_lean_matches_transformers(bf16):
    """In bf16 too, one stream through the lean runner is transformers' own greedy output, logits bit for bit.

    Without the prefix cache: reusing a prefix computes the same sums in another order, which in
    bf16 can flip a near tie (as batching does), so only fp32 checks it for exact equality.
    """
    engine = engine_for(bf16, "lean", prefix_cache=0)
    engine.start()
    try:
        for ids in prompts(bf16):
            x = torch.tensor([ids])
            with torch.inference_mode():
                ref = bf16.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=MAX_NEW, do_sample=False)
            expected = [t for t in ref[0, len(ids):].tolist() if t != bf16.tokenizer.eos_token_id]
            assert run_all(engine, [Run(ids)])[0] == expected
    finally:
        engine.stop()
    runner = engine.runner
    with torch.inference_mode():
        ids = prompts(bf16)[1]
        runner.reset()
        assert torch.equal(runner.prefill([ids])[0], bf16.model(torch.tensor([ids])).logits[0, -1])
        runner.reset()


def test_a_cancelled_row_leaves_within_two_steps(bf16, runner):
    engine = engine_for(bf16, runner)
    engine.start()
    try:
        stays, leaves = Run(prompts(bf16)[0], 200), Run(prompts(bf16)[1], 200)
        run_steps = lambda: engine.steps  # noqa: E731
        engine.submit(stays.seq)
        engine.submit(leaves.seq)
        while len(leaves.tokens) < 3:
            time.sleep(0.002)
        at_cancel = run_steps()
        leaves.seq.cancelled.set()
        leaves.wait(30)
        assert leaves.reason == "cancelled"
        assert run_steps() - at_cancel <= 2
        deadline = time.monotonic() + 5
        while engine.active != 1 and time.monotonic() < deadline:  # the row is dropped right after its callback
            time.sleep(0.002)
        assert not stays.done.is_set() and engine.active == 1
        stays.seq.cancelled.set()
        stays.wait(30)
    finally:
        engine.stop()


def test_seeded_rows_are_reproducible_alone_and_in_a_batch(fp32, runner):
    engine = engine_for(fp32, runner)
    engine.start()
    ps = prompts(fp32)
    sampler = lambda seed: Sampler(temperature=1.0, top_p=0.9, seed=seed)  # noqa: E731
    try:
        a = run_all(engine, [Run(ps[0], 12, sampler(7))])[0]
        b = run_all(engine, [Run(ps[0], 12, sampler(7))])[0]
        batch = run_all(engine, [Run(ps[1], 12, sampler(1)), Run(ps[0], 12, sampler(7)), Run(ps[2], 12, Sampler(0.8, 1.0))])
    finally:
        engine.stop()
    assert a == b == batch[1]


def test_a_failing_step_errors_every_row_and_the_engine_keeps_serving(bf16, runner):
    engine = engine_for(bf16, runner)
    real_decode, raised = engine.runner.decode, []

    def flaky(tokens):
        if len(tokens) == 3 and not raised:  # once, when all three rows are in the batch
            raised.append(True)
            raise RuntimeError("boom")
        return real_decode(tokens)

    engine.runner.decode = flaky
    engine.start()
    try:
        rows = [Run(p, 50) for p in prompts(bf16)[:3]]
        for r in rows:
            engine.submit(r.seq)
        for r in rows:
            r.wait(60)
        assert all(isinstance(r.error, RuntimeError) for r in rows)
        assert engine.active == 0
        after = run_all(engine, [Run(prompts(bf16)[0], 4)])[0]
        assert len(after) == 4
    finally:
        engine.stop()


def test_join_groups_keep_padding_small():
    seqs = [Sequence([0] * n, 1, Sampler(), lambda t: False, lambda r, n: None, lambda e: None) for n in (60, 1000, 62, 990, 61)]
    groups = _groups(seqs)
    assert sorted(len(s.prompt_ids) for g in groups for s in g) == [60, 61, 62, 990, 1000]
    assert [[len(s.prompt_ids) for s in g] for g in groups] == [[60, 61, 62], [990, 1000]]


def test_choose_is_per_row():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    greedy = Sampler(temperature=0)
    penalized = Sampler(temperature=0, presence_penalty=10.0)
    penalized.counts[0] = 1  # token 0 already seen
    narrow = Sampler(temperature=1.0, top_p=0.01, seed=3)  # the nucleus is the single most likely token
    assert choose(logits, [greedy, penalized, narrow]) == [1, 2, 2]


def test_nucleus_is_exact_even_when_candidates_fall_short():
    probs = torch.full((1000,), 1 / 1000)  # flat: nothing above the candidate floor holds top_p
    probs[0] = 0.0
    probs = probs / probs.sum()
    ids, cdf = _nucleus(probs, (probs >= 0.5).nonzero().squeeze(1), 0.5)
    assert len(ids) == 500 and abs(float(cdf[-1]) - 0.5) < 0.01 and 0 not in ids.tolist()
    peaked = torch.tensor([0.6, 0.3, 0.05, 0.05])
    ids, _ = _nucleus(peaked, torch.arange(4), 0.8)
    assert ids.tolist() == [0, 1]


def test_a_shared_prefix_is_reused_and_changes_nothing(fp32):
    """A prompt sharing the system prompt with an earlier one prefills only the rest, with the same output."""
    tok = fp32.tokenizer
    system = {"role": "system", "content": "Current date and time: Sunday, 22 November 2026, 00:46 UTC.\n\nYou are a helpful assistant."}
    # The last one is long: its new part is prefilled by padded causal attention, the others' by an offset mask.
    questions = [*QUESTIONS, "Summarize: " + " ".join(f"Item {i} is a red box on a green table." for i in range(30))]
    ps = [tok.apply_chat_template([system, {"role": "user", "content": q}], add_generation_prompt=True, return_dict=True)["input_ids"] for q in questions]
    cold = engine_for(fp32, "lean", prefix_cache=0)
    cold.start()
    try:
        expected = [run_all(cold, [Run(p, 12)])[0] for p in ps]
    finally:
        cold.stop()
    warm = engine_for(fp32, "lean")
    warm.start()
    try:
        assert run_all(warm, [Run(ps[0], 12)])[0] == expected[0]
        _, _, cached = warm.runner.prefixes.lookup(ps[1])
        assert cached >= 30  # the template and the system message
        assert run_all(warm, [Run(p, 12) for p in ps[1:]]) == expected[1:]
    finally:
        warm.stop()


def test_a_prefix_new_prompts_share_is_computed_once(fp32):
    """A burst whose system prompt is not cached yet (a new minute in it) computes that prompt once, not once a row."""
    tok = fp32.tokenizer
    system = {"role": "system", "content": "Current date and time: Sunday, 22 November 2026, 06:31 UTC.\n\nYou are a helpful assistant."}
    ps = [tok.apply_chat_template([system, {"role": "user", "content": q}], add_generation_prompt=True, return_dict=True)["input_ids"] for q in QUESTIONS]
    shared = len(os.path.commonprefix(ps))
    assert shared > 30
    plain = llama_runner.LlamaRunner(fp32.model, max_batch_size=8, max_context=2048, prefix_entries=0)
    expected = plain.prefill(ps)
    assert plain.last_fresh == sum(map(len, ps))
    runner = llama_runner.LlamaRunner(fp32.model, max_batch_size=8, max_context=2048)
    got = runner.prefill(ps)
    # The shared part once, then each row's own rest; the rows (and nothing else) are in the cache.
    assert runner.last_fresh == shared + sum(len(p) - shared for p in ps)
    assert runner.rows == len(ps)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()
    # And decoding on from those rows continues as without the shared pass.
    step = got.argmax(-1).tolist()
    torch.testing.assert_close(runner.decode(step), plain.decode(step), atol=2e-4, rtol=1e-4)
    # A second burst, with its own system prompt, joins the four decoding rows the same way.
    other = {"role": "system", "content": "Current date and time: Sunday, 22 November 2026, 06:32 UTC.\n\nAnswer in French, in one short sentence, and always politely."}
    more = [tok.apply_chat_template([other, {"role": "user", "content": q}], add_generation_prompt=True, return_dict=True)["input_ids"] for q in QUESTIONS[:2]]
    torch.testing.assert_close(runner.prefill(more), plain.prefill(more), atol=2e-4, rtol=1e-4)
    cached = len(os.path.commonprefix([ps[0], more[0]]))  # up to the minute, from the first burst
    shared = len(os.path.commonprefix(more))
    assert shared - cached >= 16 and runner.last_fresh == sum(map(len, more)) - cached - shared
    assert runner.rows == plain.rows == 6
    step = [0] * 6
    torch.testing.assert_close(runner.decode(step), plain.decode(step), atol=2e-4, rtol=1e-4)
    # A long shared part (a document, two questions on it) goes through per-row attention, not the batched one.
    doc = "Read this: " + " ".join(f"Item {i} is a red box on a green table." for i in range(30))
    asks = [tok.apply_chat_template([{"role": "user", "content": f"{doc}\n\n{q}"}], add_generation_prompt=True, return_dict=True)["input_ids"] for q in QUESTIONS[:2]]
    shared = len(os.path.commonprefix(asks))
    assert shared > 256
    runner.reset(), plain.reset()
    cached = runner.prefixes.lookup(asks[0])[2]  # no system prompt here: little or nothing
    torch.testing.assert_close(runner.prefill(asks), plain.prefill(asks), atol=2e-4, rtol=1e-4)
    assert runner.last_fresh == sum(map(len, asks)) - shared - cached
    step = [0, 0]
    torch.testing.assert_close(runner.decode(step), plain.decode(step), atol=2e-4, rtol=1e-4)


def long_prompt(loaded, words: int = 260) -> list[int]:
    text = " ".join(f"item{i} is {['red', 'green', 'blue'][i % 3]};" for i in range(words))
    messages = [{"role": "user", "content": f"Here is a list: {text} What colour is item7?"}]
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]


def test_a_long_prompt_prefilled_in_chunks_answers_as_in_one_piece(fp32):
    ids = long_prompt(fp32)
    assert len(ids) > 3 * 128
    whole = engine_for(fp32, "lean")
    chunked = engine_for(fp32, "lean", chunk_tokens=128, prefix_cache=0)
    got = {}
    for name, engine in (("whole", whole), ("chunked", chunked)):
        engine.start()
        try:
            got[name] = run_all(engine, [Run(ids, 12)])[0]
        finally:
            engine.stop()
    assert got["chunked"] == got["whole"] and len(got["whole"]) == 12


def test_rows_keep_decoding_while_a_long_prompt_is_prefilled_in_chunks(fp32):
    """Before: a long prompt prefilled in one pass, and every other stream got no token meanwhile."""
    events: list[str] = []
    engine = Engine(fp32.model, eos_ids=set(), max_batch_size=8, max_context=8192, runner="lean", chunk_tokens=64)
    engine.start()
    try:
        short = Run(prompts(fp32)[2], 400)
        short.seq.on_token = lambda t: events.append("short") or short.tokens.append(t) and False
        engine.submit(short.seq)
        while len(short.tokens) < 2:
            time.sleep(0.005)
        long = Run(long_prompt(fp32), 4)
        long.seq.on_token = lambda t: events.append("long") or long.tokens.append(t) and False
        events.append("long submitted")
        engine.submit(long.seq)
        long.wait()
        short.seq.cancelled.set()
        engine.wake()
        short.wait()
    finally:
        engine.stop()
    between = events[events.index("long submitted") : events.index("long")]
    chunks = len(long.seq.prompt_ids) // 64
    assert between.count("short") >= chunks - 1, (between.count("short"), chunks)
