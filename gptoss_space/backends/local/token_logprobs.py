"""Sampling's logprob records as OpenAI's entries: each token's own text and bytes, the top alternatives.

A token's bytes are its own, exact even when it holds part of a UTF-8 character (byte-level BPE
splits emoji and CJK characters across tokens): joined in order, the bytes of an answer's tokens
are the answer's UTF-8. Its `token` string is those bytes decoded, with the bytes of an
incomplete character written as `\\xNN` escapes (what OpenAI and DeepSeek send; vLLM sends
U+FFFD). A special token the answer's decoding skips (an `<|im_start|>` in the middle of an
answer) shows its name and empty bytes: it adds nothing to the content.

Bytes come from the tokenizer's vocabulary, not from decoding each token alone (which would turn
a partial character into U+FFFD): byte-level BPE (GPT-2, Llama 3, SmolLM2, o200k of gpt-oss)
through its byte-to-character table, SentencePiece pieces through `▁` and `<0xNN>`, anything
else through the tokenizer's decode of the token alone.
"""

from __future__ import annotations

import re
from functools import lru_cache

from gptoss_space.backends.local.sampling import TokenLogprobs

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, reversed: the character byte-level BPE writes for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_string(data: bytes) -> str:
    """The token's text: its bytes as UTF-8, an incomplete character's bytes as \\xNN escapes."""
    return data.decode("utf-8", "backslashreplace")


class TokenBytes:
    """id -> (token string, bytes or None), cached: the table the entries are built from."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        backend = getattr(tokenizer, "_tokenizer", None)  # tokenizers.Tokenizer (ChatTokenizer and transformers' fast ones)
        self._backend = backend if hasattr(backend, "id_to_token") else None
        kind = type(getattr(self._backend, "decoder", None)).__name__
        self._byte_level = kind == "ByteLevel"
        self._added: dict[int, tuple[str, bool]] = {}
        if self._backend is not None:
            self._added = {i: (t.content, t.special) for i, t in self._backend.get_added_tokens_decoder().items()}
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is None:
            hit = self._cache[token] = self._lookup(token)
        return hit

    def _lookup(self, token: int) -> tuple[str, list[int]]:
        added = self._added.get(token)
        if added is not None:
            text, special = added
            return text, [] if special else list(text.encode("utf-8"))
        data = self._bytes(token)
        if data is None:
            return "", []  # an id past the vocabulary (a padded embedding): no token, no bytes
        return token_string(data), list(data)

    def _bytes(self, token: int) -> bytes | None:
        if self._backend is None:
            return self._tokenizer.decode([token], skip_special_tokens=False).encode("utf-8")
        piece = self._backend.id_to_token(token)
        if piece is None:
            return None
        if self._byte_level:
            table = _byte_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            return piece.encode("utf-8")
        match = _BYTE_PIECE.fullmatch(piece)
        if match:
            return bytes([int(match.group(1), 16)])
        return piece.replace("▁", " ").encode("utf-8")

    def entry(self, record: TokenLogprobs) -> dict:
        """OpenAI's ChatCompletionTokenLogprob for one chosen token."""
        text, data = self(record.token)
        top = []
        for token, logprob in record.top:
            alt_text, alt_bytes = self(token)
            top.append({"token": alt_text, "logprob": logprob, "bytes": alt_bytes})
        return {"token": text, "logprob": record.logprob, "bytes": data, "top_logprobs": top}
