"""One request's generated ids -> Deltas: harmony's channel parser or plain detokenizing, then stop sequences."""

from __future__ import annotations

from gptoss_space.backends.base import Delta
from gptoss_space.backends.local.textstream import IncrementalDecoder, StopMatcher


class TokenDeltas:
    """Runs on the engine thread: push() per generated id, finish() once at the end.

    Stop sequences apply to the answer (content) only; `stopped` tells the engine to end the row.
    """

    def __init__(self, tokenizer, stop: list[str], *, harmony: bool):
        if harmony:
            from gptoss_space.backends.local.harmony import HarmonyParser

            self._parser = HarmonyParser()
        else:
            self._parser = _Plain(IncrementalDecoder(tokenizer, skip_special_tokens=True))
        self._stops = StopMatcher(stop)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    def push(self, token: int) -> Delta | None:
        reasoning, text = self._parser.push(token)
        return self._delta(reasoning, self._stops.feed(text))

    def finish(self) -> Delta | None:
        reasoning, text = self._parser.finish()
        return self._delta(reasoning, self._stops.feed(text) + self._stops.flush())

    @staticmethod
    def _delta(reasoning: str, content: str) -> Delta | None:
        return Delta(content=content, reasoning=reasoning) if content or reasoning else None


class _Plain:
    """A model without channels: every piece is content."""

    def __init__(self, decoder: IncrementalDecoder):
        self._decoder = decoder

    def push(self, token: int) -> tuple[str, str]:
        return "", self._decoder.push(token)

    def finish(self) -> tuple[str, str]:
        return "", self._decoder.flush()
