"""Token ids to text deltas: incremental UTF-8-safe decoding and stop sequences held back across pieces."""

from __future__ import annotations


class IncrementalDecoder:
    """Decodes a growing list of ids and returns only the new text, never a broken character.

    Decoding a window (prefix_offset:) rather than single tokens keeps the spacing that
    SentencePiece/BPE tokenizers attach to word-initial tokens, and a trailing U+FFFD means
    a multi-byte character is still incomplete, so it waits for the next token.
    """

    def __init__(self, tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self._fast = _backend_decode(tokenizer)

    def _decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast(ids, skip_special_tokens=self.skip)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held (an incomplete character at the very end)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :] if len(full) > len(prefix) else ""


def _backend_decode(tokenizer):
    """The Rust tokenizer's own decode where transformers' wrapper would only call it (3x less per token)."""
    fast = getattr(tokenizer, "backend_decode", None)  # chat_tokenizer.ChatTokenizer: no transformers to import
    if fast is not None:
        return fast
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    if isinstance(tokenizer, TokenizersBackend) and type(tokenizer)._decode is TokenizersBackend._decode and backend:
        return backend.decode
    return None


class StopMatcher:
    """Finds stop sequences in streamed text, holding back a tail that could start one.

    One Knuth-Morris-Pratt automaton per stop sequence: each new character advances every
    automaton in amortized constant time, so a token costs its own length whatever the stop
    sequences are (the previous rescan of the held tail cost up to 95 ms a token for long,
    self-similar stop sequences, on the engine thread, for every row of the batch).
    """

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._fail = [_failure(s) for s in self.stops]
        self._state = [0] * len(self.stops)  # characters of each stop matched at the end of the text so far
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Returns the text safe to emit now; sets `stopped` when a stop sequence was found."""
        if not self.stops or self.stopped:
            return "" if self.stopped else text
        buf = self.held + text
        start = len(self.held)
        for pos in range(start, len(buf)):
            ch = buf[pos]
            for i, stop in enumerate(self.stops):
                k, fail = self._state[i], self._fail[i]
                while k and stop[k] != ch:
                    k = fail[k - 1]
                if stop[k] == ch:
                    k += 1
                if k == len(stop):
                    self.stopped, self.held = True, ""
                    return buf[: pos + 1 - len(stop)]
                self._state[i] = k
        keep = max(self._state)  # the longest tail that may still grow into a stop sequence
        self.held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def _failure(pattern: str) -> list[int]:
    """KMP's failure table: for each prefix, the length of its longest proper border."""
    fail, k = [0] * len(pattern), 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    return fail
