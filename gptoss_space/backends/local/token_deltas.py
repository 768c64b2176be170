"""One request's generated ids -> Deltas: harmony's channel parser or plain detokenizing, then stop sequences."""

from __future__ import annotations

from gptoss_space.backends.base import Delta
from gptoss_space.backends.local.sampling import TokenLogprobs
from gptoss_space.backends.local.textstream import IncrementalDecoder, StopMatcher


class TokenDeltas:
    """Runs on the engine thread: push() per generated id, finish() once at the end.

    Stop sequences apply to the answer (content) only; `stopped` tells the engine to end the row.

    With `logprobs` (a token_logprobs.TokenBytes), each answer token's record becomes an entry
    that rides on the next Delta with content (a token whose text is held back, an incomplete
    character or the start of a possible stop sequence, waits with it), the rest on finish()'s.
    Every token pushed gets one entry, the tokens of a matched stop sequence too (their text is
    cut from the content, they still count in completion_tokens): the entries number the
    completion tokens. For harmony only the tokens of the answer (the final channel, or what the
    parser routes to content) get entries, as OpenAI reports none for reasoning tokens; the
    analysis channel and the format's own tokens count in completion_tokens without one. (vLLM's
    chat serving builds the entries from all the output's token ids, so there they include the
    analysis and the markup of gpt-oss; read in its code, not checked against a running vLLM.)
    """

    def __init__(self, tokenizer, stop: list[str], *, harmony: bool, logprobs=None):
        if harmony:
            from gptoss_space.backends.local.harmony import HarmonyParser

            self._parser = HarmonyParser()
        else:
            self._parser = _Plain(IncrementalDecoder(tokenizer, skip_special_tokens=True))
        self._stops = StopMatcher(stop)
        self._table = logprobs
        self._entries: list[dict] = []

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def push(self, token: int, record: TokenLogprobs | None = None) -> Delta | None:
        reasoning, text = self._parser.push(token)
        if record is not None and self._table is not None and self._parser.routed == "content":
            self._entries.append(self._table.entry(record))
        return self._delta(reasoning, self._stops.feed(text))

    def finish(self) -> Delta | None:
        reasoning, text = self._parser.finish()
        return self._delta(reasoning, self._stops.feed(text) + self._stops.flush(), last=True)

    def _delta(self, reasoning: str, content: str, last: bool = False) -> Delta | None:
        entries = None
        if self._entries and (content or last):
            entries, self._entries = self._entries, []
        if content or reasoning or entries:
            return Delta(content=content, reasoning=reasoning, logprobs=entries)
        return None


class _Plain:
    """A model without channels: every piece is content."""

    routed = "content"

    def __init__(self, decoder: IncrementalDecoder):
        self._decoder = decoder

    def push(self, token: int) -> tuple[str, str]:
        return "", self._decoder.push(token)

    def finish(self) -> tuple[str, str]:
        return "", self._decoder.flush()
