"""Read an upstream's answers: chat-completion SSE chunks or one JSON completion into Deltas; errors; Retry-After."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gptoss_space.backends.base import Delta
from gptoss_space.backends.proxy.redact import clip
from gptoss_space.backends.proxy.upstream_body import MAX_ANSWER_BYTES, decoded
from gptoss_space.backends.proxy.upstream_body import events as sse_events
from gptoss_space.errors import UpstreamError

log = logging.getLogger(__name__)

REST_S = 0.25  # to read what follows [DONE] (the end of the body) so the connection is kept


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def error_message(body: str | bytes) -> str:
    """The message of an error body: {"error": "..."}, {"error": {"message": ...}}, {"detail": ...} or text.

    Whole: the caller scrubs it of secrets, then cuts it (redact.Scrubber.shown), never the reverse.
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    message: Any = body.strip()
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err.get("msg"))
        if isinstance(err, list) and err and isinstance(err[0], dict):  # FastAPI's 422 detail list
            err = err[0].get("msg")
        if err is not None:
            message = err if isinstance(err, str) else json.dumps(err)
    message = " ".join(str(message).split())
    if message.startswith("<"):
        return ""  # an HTML error page says nothing useful in one line: the caller uses the reason phrase
    return message


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        # "inf" or "1e400" would overflow our own Retry-After header (an int): ignore them like any nonsense.
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class AnswerReader:
    """Reads one upstream answer; tracks finish_reason and token usage for the final Delta.

    Without a usage report the counts are unknown: prompt_tokens is 0 and completion_tokens the
    number of streamed text chunks (servers send about one token per chunk), or about one token per
    4 characters for a plain JSON completion.
    """

    def __init__(self, response: httpx.Response, scrub=clip):
        self.response = response
        self.scrub = scrub  # removes our secrets from text the upstream sends back, then cuts it
        self.finish_reason: str | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.text_chunks = 0
        self.text_chars = 0
        self.parsed = 0  # JSON chunks understood
        self.done = False  # [DONE] seen

    @property
    def content_type(self) -> str:
        return self.response.headers.get("content-type", "").partition(";")[0].strip().lower()

    async def deltas(self) -> AsyncIterator[Delta]:
        """Non-empty text Deltas as the upstream sends them; returns at the end of the answer."""
        ctype = self.content_type
        if ctype == "application/json" or ctype.endswith("+json"):
            delta = await self._from_completion()
            if delta is not None:
                yield delta
            return
        if ctype == "text/html":
            raise UpstreamError("Upstream answered with an HTML page, not a chat completion", status=502)
        # Anything else is read as SSE: hand-written servers often stream it as text/plain or untyped.
        events = sse_events(self.response)
        try:
            async for sse in events:
                data = sse.data.strip()
                if not data:
                    continue
                if data == "[DONE]":
                    self.done = True
                    await _read_rest(events)
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    if sse.event == "error":
                        raise UpstreamError(f"Upstream error: {self.scrub(error_message(data))}", status=502) from None
                    raise UpstreamError("Upstream sent an event that is not JSON", status=502) from None
                delta = self.take(chunk, event=sse.event)
                if delta is not None:
                    yield delta
                if self.finish_reason is not None and self.completion_tokens is not None:
                    # The usage report is the last chunk: a [DONE] may follow, or may never come.
                    await _read_rest(events)
                    break
        finally:
            await events.aclose()
        if not self.parsed:
            raise UpstreamError("Upstream answered without any completion chunk", status=502)

    def take(self, chunk: Any, event: str = "message") -> Delta | None:
        if not isinstance(chunk, dict):
            raise UpstreamError("Upstream sent an event that is not a chat completion chunk", status=502)
        if event == "error" or chunk.get("error"):
            raise UpstreamError(f"Upstream error: {self.scrub(error_message(json.dumps(chunk)))}", status=502)
        self.parsed += 1
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = _int(usage.get("prompt_tokens"))
            self.completion_tokens = _int(usage.get("completion_tokens"))
        content = reasoning = ""
        calls: list[dict] = []
        logprobs = None
        choices = chunk.get("choices") or []
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]  # we ask for one choice
            logprobs = logprob_entries(choice.get("logprobs"))
            delta = choice.get("delta") or choice.get("message") or {}
            if isinstance(delta, dict):
                content = _text(delta.get("content"))
                # vLLM/SGLang/DeepSeek say reasoning_content, Ollama/OpenRouter say reasoning; some send both.
                reasoning = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
                calls = tool_call_pieces(delta.get("tool_calls"))
            content = content or _text(choice.get("text"))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        if not content and not reasoning and not calls:
            return Delta(logprobs=logprobs) if logprobs else None
        self.text_chunks += 1
        self.text_chars += len(content) + len(reasoning) + sum(len(c["function"].get("arguments", "")) for c in calls)
        return Delta(content=content, reasoning=reasoning, tool_calls=calls, logprobs=logprobs or None)

    async def _from_completion(self) -> Delta | None:
        raw = bytearray()
        async for piece in decoded(self.response, MAX_ANSWER_BYTES, "the completion"):
            raw += piece
        try:
            data = json.loads(raw)
        except ValueError:
            raise UpstreamError("Upstream answered invalid JSON", status=502) from None
        delta = self.take(data)
        if not self.parsed or (delta is None and not isinstance(data.get("choices"), list)):
            raise UpstreamError("Upstream answer is not a chat completion", status=502)
        self.text_chunks = 0  # one JSON answer: estimate tokens from characters instead
        return delta

    def final(self) -> Delta:
        """The last Delta: finish_reason ("stop" unless the upstream said "length") and token counts."""
        if self.completion_tokens is not None:
            completion = self.completion_tokens
        elif self.text_chunks:
            completion = self.text_chunks
        else:
            completion = -(-self.text_chars // 4)
        return Delta(
            finish_reason=self.finish_reason if self.finish_reason in ("length", "tool_calls") else "stop",
            prompt_tokens=self.prompt_tokens or 0,
            completion_tokens=completion,
        )


def logprob_entries(value: Any) -> list[dict] | None:
    """The entries of an upstream's `choices[0].logprobs.content`, rebuilt field by field (OpenAI's shape only).

    An entry without a string token or a numeric logprob is left out; bytes that are not a list of
    0..255 become null (OpenAI's "no bytes representation"); nothing else the upstream sent passes.
    """
    content = value.get("content") if isinstance(value, dict) else None
    if not isinstance(content, list):
        return None
    out = []
    for item in content:
        entry = _logprob(item)
        if entry is not None:
            tops = item.get("top_logprobs")
            entry["top_logprobs"] = [t for t in map(_logprob, tops if isinstance(tops, list) else []) if t is not None]
            out.append(entry)
    return out


def _logprob(item: Any) -> dict | None:
    if not isinstance(item, dict) or not isinstance(item.get("token"), str):
        return None
    logprob = item.get("logprob")
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or not math.isfinite(logprob):
        return None
    data = item.get("bytes")
    ok = isinstance(data, list) and all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b < 256 for b in data)
    return {"token": item["token"], "logprob": float(logprob), "bytes": data if ok else None}


async def _read_rest(events: AsyncIterator) -> None:
    """After [DONE] (or the usage report) only the end of the body should follow: read it, briefly.

    httpx keeps a connection for the next request only once its response was read to the end;
    closed before, the connection is dropped, and every answer would pay a new TCP (and TLS)
    handshake to the upstream. An upstream that keeps the body open is closed after REST_S.
    """
    try:
        async with asyncio.timeout(REST_S):
            async for _ in events:
                pass
    except (TimeoutError, httpx.HTTPError, UpstreamError):
        pass  # whatever follows the end of the answer (too much of it included) changes nothing


def tool_call_pieces(value: Any) -> list[dict]:
    """An upstream's tool_calls (streamed pieces, or a message's whole calls) as Delta.tool_calls pieces.

    Only the fields of OpenAI's shape are kept, with their types checked; ids and names pass through
    as the upstream made them (the client echoes the ids back in the next turn).
    """
    if not isinstance(value, list):
        return []
    out = []
    for position, call in enumerate(value):
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = call.get("index")
        piece: dict = {"index": index if isinstance(index, int) and index >= 0 else position}
        if isinstance(call.get("id"), str) and call["id"]:
            piece["id"], piece["type"] = call["id"], "function"
        fn: dict = {}
        if isinstance(function.get("name"), str) and function["name"]:
            fn["name"] = function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, dict):  # some servers send the object itself
            arguments = json.dumps(arguments, ensure_ascii=False)
        if isinstance(arguments, str) and (arguments or "name" in fn):
            fn["arguments"] = arguments
        if "name" in fn and "arguments" not in fn:
            fn["arguments"] = ""
        if fn or "id" in piece:
            piece["function"] = fn
            out.append(piece)
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
