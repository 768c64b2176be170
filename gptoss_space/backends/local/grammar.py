"""Constrained decoding: a grammar (llguidance Lark text) enforced token by token on one row of a batch.

A request's grammar is llguidance's Lark variant, which may embed JSON schemas (`%json {...}`)
and name special tokens (`<|im_end|>`): `json_schema_grammar`, `json_object_grammar` and the
tool-call grammars are all such text. Each constrained row gets a `Matcher`; before a token is
chosen, `apply_masks` sets the logits of every token the grammar forbids to -inf (one bitmask
per row, computed by llguidance), and the chosen token advances the matcher. The end-of-sequence
ids are allowed only where the grammar accepts, and are all that is left once it is complete, so
the row then stops with finish_reason "stop". Rows without a grammar are untouched and share the batch.

Why llguidance (1.9.1) and not xgrammar (0.2.8), measured on the embedded SmolLM2-135M tokenizer
(49,152 ids, 2 shared CPUs), a 5-property schema (required, enum, integer, array, nested object)
and a 51-token answer:

    |                     | tokenizer build | schema compile | mask per token (mean / median / max) |
    | llguidance 1.9.1    | 278 ms          | 0.9 ms         | 49 us / 15 us / 1.5 ms               |
    | xgrammar 0.2.8      | 176 ms          | 7.5 ms         | 5.6 us / 1.8 us / 88 us              |

Both cost well under 1% of a decode step of the 135M model (~15-25 ms), so neither wins on
speed; llguidance wins on what the server needs: Lark grammars with inline JSON schemas and
special tokens (what tool calls and harmony's channels need; xgrammar speaks EBNF/GBNF), a
compile check without a tokenizer (the 400 comes before the request queues), a 9x faster
compile (it is paid per request), and it depends on nothing (xgrammar pulls transformers,
triton and apache-tvm-ffi into the lean path that avoids importing transformers). The o200k
(gpt-oss) tokenizer takes 2.3 s to build: done once per backend, off the event loop.

Measured in the server (embedded model, 2 CPUs, bench/grammar.py and the engine alone): masks
and matcher cost 0.4 ms a token beside a ~23 ms decode step; one json_schema stream decoded
41.6 tok/s beside 41.5 free (1.00x), 8 clients half constrained 186 tok/s beside 197 all free
(0.94x). The compile check on the request path takes 0.9 ms for a typical schema, 2 ms at 7 KB;
a larger grammar is compiled only in a worker thread (a 337 KB schema: 206 ms to check).

For gpt-oss (harmony) the grammar applies to the final channel only: `Vocabulary.matcher(...,
harmony=True)` wraps it in a grammar that lets the analysis channel run free, then requires
`<|channel|>final<|message|>` followed by the request's grammar. A grammar that names
`<|channel|>` itself (a tool call on the commentary channel) describes the whole harmony output
and is not wrapped (`wraps_for_harmony`); `HARMONY_ANALYSIS` is the free analysis rule to reuse.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading

import numpy as np
import torch

log = logging.getLogger(__name__)

# Compact JSON, as OpenAI's structured outputs write it: no free whitespace (a small model can loop
# on newlines forever), ", " and ": " between items. A schema's own "x-guidance" keys win.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Grammars up to this size are compiled on the request path (~0.6 ms a KB); larger ones only off the event loop.
INLINE_CHECK_CHARS = 8192

# An optional free analysis message, up to the `<|start|>assistant` of the next one (rules for Lark text).
HARMONY_ANALYSIS = r"""
analysis: <|channel|> "analysis" <|message|> REASONING <|end|> <|start|> "assistant"
REASONING: /(.|\n)*/
"""
_HARMONY_FINAL = 'start: analysis? <|channel|> "final" <|message|> @answer\n' + HARMONY_ANALYSIS


class GrammarError(ValueError):
    """A grammar (or the JSON schema in it) that llguidance cannot compile; the message says why."""


def json_schema_grammar(schema: dict) -> str:
    """Lark text for a JSON value that validates against `schema`."""
    return "start: %json " + json.dumps({"x-guidance": JSON_OPTIONS, **schema})


def json_object_grammar() -> str:
    """Lark text for any JSON object (response_format json_object)."""
    return json_schema_grammar({"type": "object"})


def _llg():
    import llguidance

    return llguidance


def wraps_for_harmony(grammar: str) -> bool:
    """Whether a harmony model's grammar is wrapped to bind the final channel (it does not name a channel itself)."""
    return "<|channel|>" not in grammar


def _serialized(grammar: str, harmony: bool) -> str:
    llg = _llg()
    if not harmony or not wraps_for_harmony(grammar):
        return llg.LLMatcher.grammar_from_lark(grammar)
    return json.dumps({"grammars": [{"lark_grammar": _HARMONY_FINAL}, {"name": "answer", "lark_grammar": grammar}]})


def _message(error: str) -> str:
    """llguidance's error without the grammar it echoes back (which can be the whole schema)."""
    first = error.strip().splitlines()[0] if error.strip() else "invalid grammar"
    first = re.sub(r"^at \d+\(\d+\): ", "", first)  # a position in the Lark text, which the client never wrote
    return first if len(first) <= 300 else first[:297] + "..."


def compile_check(grammar: str) -> None:
    """Raise GrammarError when `grammar` (Lark text) or a schema inside it cannot compile. No tokenizer needed."""
    try:
        error = _llg().LLMatcher.validate_grammar(_serialized(grammar, False))
    except (ValueError, RuntimeError) as e:
        raise GrammarError(_message(str(e))) from None
    if error:
        raise GrammarError(_message(error))


def tokenizer_json(tokenizer) -> str:
    """The tokenizers-library JSON of a ChatTokenizer or a transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise GrammarError(f"constrained decoding needs a fast tokenizer, not {type(tokenizer).__name__}")
    return backend.to_str()


# Vocabularies built in this process, by their key: a ZeroGPU worker forked from it finds them here
# when a pickled matcher arrives, instead of building the tokenizer again.
_BUILT: dict[tuple, Vocabulary] = {}


class Vocabulary:
    """llguidance's view of one model's tokenizer: built once per backend (0.3 s for 49k ids, 2.3 s for o200k)."""

    def __init__(self, tokenizer, *, n_vocab: int, eos_ids: set[int]):
        self.eos_ids = sorted(eos_ids)
        self.n_vocab = max(n_vocab, *(i + 1 for i in self.eos_ids)) if self.eos_ids else n_vocab
        self.words = (self.n_vocab + 31) // 32
        self._json = tokenizer if isinstance(tokenizer, str) else tokenizer_json(tokenizer)
        self.tokenizer = _llg().LLTokenizer(self._json, n_vocab=self.n_vocab, eos_token=self.eos_ids)
        self.key = (hashlib.sha256(self._json.encode()).hexdigest(), self.n_vocab, tuple(self.eos_ids))
        _BUILT.setdefault(self.key, self)

    def __reduce__(self):
        # llguidance's objects do not pickle; ZeroGPU sends each request's sampler to a worker process.
        return _vocabulary, (self.key, self._json, self.n_vocab, self.eos_ids)

    def matcher(self, grammar: str, *, harmony: bool = False) -> Matcher:
        """A fresh matcher for one row; GrammarError if the grammar does not compile for this tokenizer."""
        return Matcher(self, grammar, harmony=harmony)


class Matcher:
    """One row's grammar state. Used only on the engine thread, after construction."""

    def __init__(self, vocab: Vocabulary, grammar: str, *, harmony: bool = False):
        self.vocab = vocab
        self._eos = frozenset(vocab.eos_ids)
        self._grammar, self._harmony, self._tokens = grammar, harmony, []
        self._m = _llg().LLMatcher(vocab.tokenizer, _serialized(grammar, harmony), log_level=0)
        if self._m.is_error():
            raise GrammarError(_message(self._m.get_error()))

    def __reduce__(self):
        return _matcher, (self.vocab, self._grammar, self._harmony, self._tokens)

    @property
    def done(self) -> bool:
        """Nothing but an end-of-sequence id may follow (the grammar is complete, or it failed)."""
        return self._m.is_stopped()

    @property
    def accepting(self) -> bool:
        return self._m.is_accepting()

    def fill(self, out: np.ndarray) -> None:
        """Write the bitmask of the allowed next ids (bit i of word i // 32) into `out` (int32, vocab.words)."""
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)

    def advance(self, token: int) -> None:
        if token in self._eos:
            return  # the row ends here
        self._tokens.append(token)
        if not self._m.consume_token(token):
            log.warning("grammar refused a chosen token (%d): %s", token, _message(self._m.get_error()))


def apply_masks(logits: torch.Tensor, rows: list[int], matchers: list[Matcher]) -> torch.Tensor:
    """`logits` [rows, vocab] with the forbidden ids of each constrained row at -inf, in place; returns it.

    Every runner hands over fresh logits each step, so no copy is made. The fill goes in pieces
    below torch's parallel grain (32,768 elements): one 49k-element op is split across the OpenMP
    threads, and on a busy machine waiting for the second thread cost 15-40 ms a step where the
    whole mask costs ~0.2 ms on one thread.
    """
    width = logits.shape[-1]
    bits = np.zeros((len(rows), matchers[0].vocab.words), dtype=np.int32)
    for j, m in enumerate(matchers):
        m.fill(bits[j])
    allowed = np.unpackbits(bits.view(np.uint8), axis=1, count=width, bitorder="little").view(bool)
    empty = ~allowed.any(axis=1)
    if empty.any():  # a failed matcher allows nothing: end the row rather than sample from no token at all
        for j in np.flatnonzero(empty):
            allowed[j, [e for e in matchers[j].vocab.eos_ids if e < width]] = True
    forbid = torch.from_numpy(~allowed).to(logits.device)
    for j, row in enumerate(rows):
        for piece, no in zip(logits[row].split(_PIECE), forbid[j].split(_PIECE)):
            piece.masked_fill_(no, float("-inf"))
    return logits


_PIECE = 16384


def _vocabulary(key: tuple, tokenizer_json: str, n_vocab: int, eos_ids: list[int]) -> Vocabulary:
    return _BUILT.get(key) or Vocabulary(tokenizer_json, n_vocab=n_vocab, eos_ids=set(eos_ids))


def _matcher(vocab: Vocabulary, grammar: str, harmony: bool, tokens: list[int]) -> Matcher:
    m = Matcher(vocab, grammar, harmony=harmony)
    for t in tokens:
        m.advance(t)
    return m


class VocabularyCache:
    """A backend's Vocabulary, built at the first constrained request (on a worker thread), then shared."""

    def __init__(self):
        self._lock = threading.Lock()
        self._vocab: Vocabulary | None = None

    def get(self, tokenizer, *, n_vocab: int, eos_ids: set[int]) -> Vocabulary:
        with self._lock:
            if self._vocab is None:
                self._vocab = Vocabulary(tokenizer, n_vocab=n_vocab, eos_ids=eos_ids)
            return self._vocab
