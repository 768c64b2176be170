"""One request's generated ids -> Deltas: harmony's channel parser or plain detokenizing, stop sequences, tool calls."""

from __future__ import annotations

from gptoss_space.backends.base import Delta
from gptoss_space.backends.local.sampling import TokenLogprobs
from gptoss_space.backends.local.textstream import IncrementalDecoder, StopMatcher


class TokenDeltas:
    """Runs on the engine thread: push() per generated id, finish() once at the end.

    Stop sequences apply to the answer (content) only; `stopped` tells the engine to end the row.
    With `tools`, calls become Delta.tool_calls: harmony's `to=functions.NAME` messages, or for other
    models the Hermes `<tool_call>` blocks found in the content (after the stop sequences, as vLLM
    applies them to the whole text first). `called` says whether any call was made; with
    `parallel=False` the row ends once the first call is complete.

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

    def __init__(self, tokenizer, stop: list[str], *, harmony: bool, tools: bool = False, parallel: bool = True,
                 logprobs=None):
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
        self._table = logprobs
        self._entries: list[dict] = []

    @property
    def stopped(self) -> bool:
        return self._stops.stopped or self._calls_done

    @property
    def _calls_done(self) -> bool:
        return (self._hermes if self._hermes is not None else self._parser).done

    @property
    def called(self) -> bool:
        return (self._hermes if self._hermes is not None else self._parser).called

    def push(self, token: int, record: TokenLogprobs | None = None) -> Delta | None:
        reasoning, text = self._parser.push(token)
        if record is not None and self._table is not None and self._parser.routed == "content":
            self._entries.append(self._table.entry(record))
        return self._delta(reasoning, self._stops.feed(text), final=False)

    def finish(self) -> Delta | None:
        reasoning, text = self._parser.finish()
        return self._delta(reasoning, self._stops.feed(text) + self._stops.flush(), final=True)

    def _delta(self, reasoning: str, content: str, *, final: bool) -> Delta | None:
        calls = self._parser.take_calls()  # harmony's function calls
        if self._hermes is not None:
            content, calls = self._hermes.feed(content)
            if final:
                more, tail = self._hermes.finish()
                content, calls = content + more, calls + tail
        entries = None
        if self._entries and (content or calls or final):
            entries, self._entries = self._entries, []
        if content or reasoning or calls or entries:
            return Delta(content=content, reasoning=reasoning, tool_calls=calls, logprobs=entries)
        return None


class _Plain:
    """A model without channels: every piece is content."""

    routed = "content"
    # Its tool calls, if any, are Hermes blocks in the content, read by TokenDeltas' HermesToolParser.
    called = done = False

    def __init__(self, decoder: IncrementalDecoder):
        self._decoder = decoder

    def push(self, token: int) -> tuple[str, str]:
        return "", self._decoder.push(token)

    def finish(self) -> tuple[str, str]:
        return "", self._decoder.flush()

    def take_calls(self) -> list[dict]:
        return []
