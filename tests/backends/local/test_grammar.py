"""Constrained decoding (backends/local/grammar.py): the mask, and grammar rows batched with free ones.

Mask level: random logits sampled at temperature 1 through `sampling.choose` can only spell
JSON that validates against the schema, and stop once it is complete. Engine level: on a tiny
random Llama (the lean Engine) and a tiny random gpt-oss (PagedEngine, transformers' continuous
batching; the lean Engine over transformers' forward too), a grammar row and a free row decode in one batch: the grammar row's text validates
and ends with "stop", the free row's tokens are those it gets alone.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from gptoss_space.backends.local.engine import Engine
from gptoss_space.backends.local.grammar import (
    HARMONY_ANALYSIS,
    GrammarError,
    Vocabulary,
    compile_check,
    json_object_grammar,
    json_schema_grammar,
)
from gptoss_space.backends.local.sampling import Sampler, choose
from tests.backends.local.runners.test_llama_loading import save_tiny_llama
from tests.backends.local.test_engine import Run
from tests.support.tiny_models import HARMONY_SPECIAL_IDS, build_small_tokenizer, build_tiny_gpt_oss, build_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
EOS = HARMONY_SPECIAL_IDS["<|return|>"]  # on the o200k vocabulary of the tiny gpt-oss


@pytest.fixture(scope="module")
def small_tok():
    return build_small_tokenizer()


@pytest.fixture(scope="module")
def small_vocab(small_tok):
    return Vocabulary(small_tok, n_vocab=len(small_tok), eos_ids={small_tok.eos_token_id})


def sample_constrained(vocab: Vocabulary, grammar: str, *, seed: int, width: int, steps: int = 300) -> tuple[list[int], bool]:
    """Tokens drawn from random logits under the grammar, until an end id; (tokens, ended)."""
    g = torch.Generator().manual_seed(seed)
    sampler = Sampler(temperature=1.0, top_p=1.0, seed=seed, grammar=vocab.matcher(grammar))
    out: list[int] = []
    for _ in range(steps):
        token = choose(torch.randn(1, width, generator=g) * 4, [sampler])[0]
        if token in vocab.eos_ids:
            return out, True
        out.append(token)
    return out, False


@pytest.mark.parametrize("seed", range(12))
def test_random_logits_can_only_spell_schema_valid_json(small_tok, small_vocab, seed):
    tokens, ended = sample_constrained(small_vocab, json_schema_grammar(SCHEMA), seed=seed, width=len(small_tok))
    text = small_tok.decode(tokens)
    assert ended, f"no end after {len(tokens)} tokens: {text!r}"
    jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_grammar_gives_an_object(small_tok, small_vocab):
    for seed in range(4):
        tokens, ended = sample_constrained(small_vocab, json_object_grammar(), seed=seed, width=len(small_tok), steps=2000)
        if ended:  # free-form objects from random logits may run long; those that end must parse
            assert isinstance(json.loads(small_tok.decode(tokens)), dict)


def test_the_end_is_forbidden_until_the_grammar_accepts_and_forced_after(small_vocab):
    m = small_vocab.matcher(json_schema_grammar({"enum": ["ok"]}))
    width = small_vocab.n_vocab
    logits = torch.zeros(1, width)
    eos = small_vocab.eos_ids[0]
    logits[0, eos] = 100.0  # the model wants to stop at once
    s = Sampler(temperature=0.0, grammar=m)
    assert choose(logits, [s])[0] != eos
    while not m.done:
        choose(torch.zeros(1, width), [s])
    assert m.accepting
    logits = torch.zeros(1, width)
    logits[0, 5] = 100.0  # the model wants to go on
    assert choose(logits, [s])[0] == eos


def test_rows_without_a_grammar_are_untouched(small_vocab):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, small_vocab.n_vocab, generator=g)
    free = [Sampler(temperature=0.0), Sampler(temperature=0.0)]
    alone = choose(logits[[0, 2]], free)
    masked = logits.clone()
    mixed = choose(masked, [free[0], Sampler(temperature=0.0, grammar=small_vocab.matcher(json_object_grammar())), free[1]])
    assert [mixed[0], mixed[2]] == alone
    assert torch.equal(masked[[0, 2]], logits[[0, 2]])  # only the grammar row's logits are masked
    assert masked[1].isinf().sum() > 0 and torch.equal(masked[1].isfinite().nonzero().flatten(), torch.tensor([small_vocab.tokenizer.tokenize_str("{")[0]]))


@pytest.mark.parametrize(
    "grammar",
    [
        'start: %json {"type": "nope"}',
        'start: %json {"$ref": "#/$defs/missing"}',
        'start: %json {"type": "array", "uniqueItems": true}',
        "start: ( unclosed",
        "start: undefined_rule",
    ],
)
def test_compile_check_refuses_what_cannot_compile(grammar):
    with pytest.raises(GrammarError) as e:
        compile_check(grammar)
    assert str(e.value) and "\n" not in str(e.value)


def test_compile_check_accepts_lark_with_json_and_special_tokens():
    compile_check(json_schema_grammar(SCHEMA))
    compile_check('start: "<tool_call>\\n" %json {"type": "object"} "\\n</tool_call>"')
    compile_check("start: /[a-z]+/ <|end|>")


# -- engines ------------------------------------------------------------------------------------


def run_pair(engine, vocab: Vocabulary, tok, prompt: list[int], grammar: str, *, harmony: bool = False, max_new: int = 120):
    """A grammar row and a free greedy row submitted together, and the free row again alone."""
    constrained = Run(prompt, max_new, Sampler(temperature=1.0, top_p=1.0, seed=7, grammar=vocab.matcher(grammar, harmony=harmony)))
    free = Run(prompt[::-1], max_new)
    engine.submit(constrained.seq)
    engine.submit(free.seq)
    constrained.wait(), free.wait()
    alone = Run(prompt[::-1], max_new)
    engine.submit(alone.seq)
    alone.wait()
    assert constrained.error is None and free.error is None
    assert free.tokens == alone.tokens, "a grammar row changed what its batch neighbour decodes"
    return constrained


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tied=True, rope="default", seed=2)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("runner", ["lean", "transformers"])
def test_engine_batches_a_grammar_row_with_a_free_one(tiny_llama, small_tok, small_vocab, runner):
    engine = Engine(tiny_llama, eos_ids=set(small_vocab.eos_ids), max_batch_size=4, max_context=256, pad_id=0, runner=runner)
    assert type(engine.runner).__name__ == {"lean": "LlamaRunner", "transformers": "HFRunner"}[runner]
    engine.start()
    try:
        prompt = small_tok.encode("Hello! How are you today?")
        run = run_pair(engine, small_vocab, small_tok, prompt, json_schema_grammar(SCHEMA))
    finally:
        engine.stop()
    assert run.reason == "stop", small_tok.decode(run.tokens)
    jsonschema.validate(json.loads(small_tok.decode(run.tokens)), SCHEMA)


@pytest.fixture(scope="module")
def gpt_oss_tiny(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folder = build_tiny_gpt_oss(tmp_path_factory.mktemp("tiny-gpt-oss-grammar"), seed=5)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def o200k():
    tok = build_tokenizer()
    return tok, Vocabulary(tok, n_vocab=201088, eos_ids={EOS, HARMONY_SPECIAL_IDS["<|call|>"]})


def test_paged_engine_batches_a_grammar_row_with_a_free_one(gpt_oss_tiny, o200k):
    from gptoss_space.backends.local.paged_engine import PagedEngine

    tok, vocab = o200k
    engine = PagedEngine(gpt_oss_tiny, eos_ids=set(vocab.eos_ids), max_batch_size=4, max_context=1024)
    engine.start()
    try:
        prompt = tok.encode("What is the capital of France?")
        run = run_pair(engine, vocab, tok, prompt, json_schema_grammar(SCHEMA), max_new=60)
        # The harmony wrapping: analysis runs free, the final channel follows the grammar.
        analysis = tok.encode("<|channel|>analysis<|message|>Thinking.<|end|><|start|>assistant", add_special_tokens=False)
        matcher = vocab.matcher(json_schema_grammar({"enum": [1, 2, 3]}), harmony=True)
        for t in analysis:
            matcher.advance(t)
        assert not matcher.done
        harmony = Run(prompt + analysis, 20, Sampler(temperature=1.0, top_p=1.0, seed=3, grammar=matcher))
        engine.submit(harmony.seq)
        harmony.wait()
    finally:
        engine.stop()
    assert run.reason == "stop", tok.decode(run.tokens)
    jsonschema.validate(json.loads(tok.decode(run.tokens)), SCHEMA)
    assert harmony.reason == "stop"
    text = tok.decode(harmony.tokens, skip_special_tokens=False)
    assert text.startswith("<|channel|>final<|message|>") and json.loads(text.split("<|message|>", 1)[1]) in (1, 2, 3), text


def test_a_matcher_pickles_with_its_progress(small_tok, small_vocab):
    """ZeroGPU sends each request's sampler to a worker process: the grammar must cross it, state included."""
    import pickle

    import numpy as np

    m = small_vocab.matcher(json_schema_grammar(SCHEMA))
    for t in small_tok.encode('{"name": "Al'):
        m.advance(t)
    copy = pickle.loads(pickle.dumps(Sampler(temperature=0.0, grammar=m))).grammar
    assert copy.vocab is small_vocab  # found in this process, not built again
    a, b = np.zeros(small_vocab.words, np.int32), np.zeros(small_vocab.words, np.int32)
    m.fill(a)
    copy.fill(b)
    assert (a == b).all() and a.any()


def test_a_harmony_grammar_naming_its_channel_is_taken_whole(o200k):
    """A tool call on the commentary channel: the grammar describes the whole output, no final channel forced."""
    tok, vocab = o200k
    grammar = ('start: analysis? <|channel|> "commentary to=functions.get_weather" <|constrain|> "json" <|message|> '
               '%json {"type": "object", "properties": {"city": {"const": "Paris"}}, "required": ["city"]}\n' + HARMONY_ANALYSIS)
    compile_check(grammar)
    m = vocab.matcher(grammar, harmony=True)
    text = ('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather'
            '<|constrain|>json<|message|>{"city": "Paris"}')
    for t in tok.encode(text, add_special_tokens=False):
        m.advance(t)
        assert not m._m.is_error(), m._m.get_error()
    assert m.done and m.accepting
