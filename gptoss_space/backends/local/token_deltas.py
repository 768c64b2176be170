"""One request's generated ids -> Deltas: harmony's channel parser or plain detokenizing, stop sequences, tool calls."""

from __future__ import annotations

from gptoss_space.backends.base import Delta
from gptoss_space.backends.local.textstream import IncrementalDecoder, StopMatcher


class TokenDeltas:
    """Runs on the engine thread: push() per generated id, finish() once at the end.

    Stop sequences apply to the answer (content) only; `stopped` tells the engine to end the row.
    With `tools`, calls become Delta.tool_calls: harmony's `to=functions.NAME` messages, or for other
    models the Hermes `<tool_call>` blocks found in the content (after the stop sequences, as vLLM
    applies them to the whole text first). `called` says whether any call was made; with
    `parallel=False` the row ends once the first call is complete.
    """

    def __init__(self, tokenizer, stop: list[str], *, harmony: bool, tools: bool = False, parallel: bool = True):
        self._hermes = None
        if harmony:
            from gptoss_space.backends.local.harmony import HarmonyParser

            self._parser = HarmonyParser(tools=tools, parallel=parallel)
        else:
            self._parser = _Plain(IncrementalDecoder(tokenizer, skip_special_tokens=True))
            if tools:
                from gptoss_space.backends.local.tool_parse import HermesToolParser

                self._hermes = HermesToolParser(parallel=parallel)
        self._stops = StopMatcher(stop)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped or self._calls_done

    @property
    def _calls_done(self) -> bool:
        return bool(self._hermes.done if self._hermes is not None else getattr(self._parser, "done", False))

    @property
    def called(self) -> bool:
        return bool(self._hermes.called if self._hermes is not None else getattr(self._parser, "called", False))

    def push(self, token: int) -> Delta | None:
        reasoning, text = self._parser.push(token)
        return self._delta(reasoning, self._stops.feed(text), final=False)

    def finish(self) -> Delta | None:
        reasoning, text = self._parser.finish()
        return self._delta(reasoning, self._stops.feed(text) + self._stops.flush(), final=True)

    def _delta(self, reasoning: str, content: str, *, final: bool) -> Delta | None:
        calls: list[dict] = []
        take = getattr(self._parser, "take_calls", None)
        if take is not None:
            calls = take()
        if self._hermes is not None:
            content, calls = self._hermes.feed(content)
            if final:
                more, tail = self._hermes.finish()
                content, calls = content + more, calls + tail
        if content or reasoning or calls:
            return Delta(content=content, reasoning=reasoning, tool_calls=calls)
        return None


class _Plain:
    """A model without channels: every piece is content."""

    def __init__(self, decoder: IncrementalDecoder):
        self._decoder = decoder

    def push(self, token: int) -> tuple[str, str]:
        return "", self._decoder.push(token)

    def finish(self) -> tuple[str, str]:
        return "", self._decoder.flush()
