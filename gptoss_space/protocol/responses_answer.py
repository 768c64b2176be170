"""Deltas into the Responses API's answer: one Response object, or its typed SSE events.

One ResponseBuilder serves both: every delta becomes output items (a `reasoning` item for gpt-oss's
analysis channel, a `message` with one `output_text` part, a `function_call` per tool call) and the
stream events OpenAI sends for them, each with its `sequence_number`. The non-streamed answer is the
same builder drained, its events dropped.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
from collections.abc import AsyncIterator

from gptoss_space.backends.base import Delta
from gptoss_space.errors import APIError, GenerationFailed, InvalidRequest, RateLimited
from gptoss_space.protocol.request import now_unix

log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def to_event_sse(event: dict) -> bytes:
    """`event: <type>` then its JSON, as OpenAI streams Responses events."""
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def failure_code(e: APIError) -> str:
    """The Response.error code OpenAI's SDK knows for this error."""
    if isinstance(e, RateLimited):
        return "rate_limit_exceeded"
    return "invalid_prompt" if isinstance(e, InvalidRequest) else "server_error"


class ResponseBuilder:
    """One response's output items, status and events; `echo` holds the request fields a Response repeats."""

    def __init__(self, echo: dict, *, model: str):
        self.id = new_id("resp")
        self.created_at = now_unix()
        self.model = model
        self.echo = echo
        self.status = "in_progress"
        self.output: list[dict] = []
        self.usage: dict | None = None
        self.incomplete: dict | None = None
        self.error: dict | None = None
        self.sequence = 0
        self._open: list[int] = []  # output indexes of items still receiving deltas
        self._texts: dict[int, list[str]] = {}  # their text so far, joined when they close
        self._calls: dict[int, int] = {}  # tool call index -> output index
        self._reasoning_deltas = 0

    # -- the Response object ------------------------------------------------------------------------

    def body(self) -> dict:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": False,
            "error": self.error,
            "incomplete_details": self.incomplete,
            **self.echo,
            "model": self.model,
            "output": self.output,
            "usage": self.usage,
        }

    def snapshot(self) -> dict:
        return copy.deepcopy(self.body())

    # -- events -------------------------------------------------------------------------------------

    def _event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict]:
        return [self._event("response.created", response=self.snapshot()),
                self._event("response.in_progress", response=self.snapshot())]

    def feed(self, d: Delta) -> list[dict]:
        """The events for one delta; the last delta (finish_reason) also closes the response."""
        events: list[dict] = []
        if d.reasoning:
            self._reasoning_deltas += 1
            events += self._text(d.reasoning, "reasoning")
        if d.content:
            events += self._text(d.content, "message")
        # Tool calls arrive as pieces in chat completions' shape: {"index", "id", "type", "function": {"name", "arguments"}}.
        for piece in d.tool_calls:
            events += self._call(piece)
        if d.finish_reason:
            events += self._finish(d)
        return events

    def fail(self, e: APIError) -> list[dict]:
        """An error after the stream began: the open items end incomplete, then `error`, then `response.failed`."""
        events = self._close_all("incomplete")
        events.append(self._event("error", code=e.code or e.type, message=e.message, param=e.param))
        self.status = "failed"
        self.error = {"code": failure_code(e), "message": e.message}
        return events + [self._event("response.failed", response=self.snapshot())]

    # -- items --------------------------------------------------------------------------------------

    def _current(self, kind: str) -> int | None:
        return self._open[-1] if self._open and self.output[self._open[-1]]["type"] == kind else None

    def _add(self, item: dict) -> tuple[int, list[dict]]:
        events = self._close_all("completed") if not (self._open and item["type"] == "function_call"
                                                      and self._current("function_call") is not None) else []
        index = len(self.output)
        self.output.append(item)
        self._open.append(index)
        self._texts[index] = []
        return index, events + [self._event("response.output_item.added", output_index=index, item=copy.deepcopy(item))]

    def _text(self, text: str, kind: str) -> list[dict]:
        events: list[dict] = []
        index = self._current(kind)
        if index is None:
            if kind == "reasoning":
                item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
                part = {"type": "reasoning_text", "text": ""}
            else:
                item = {"id": new_id("msg"), "type": "message", "status": "in_progress", "role": "assistant", "content": []}
                part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            index, events = self._add(item)
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part=part))
        if not text:
            return events
        self._texts[index].append(text)
        item_id = self.output[index]["id"]
        if kind == "reasoning":
            return events + [self._event("response.reasoning_text.delta", item_id=item_id, output_index=index,
                                         content_index=0, delta=text)]
        return events + [self._event("response.output_text.delta", item_id=item_id, output_index=index,
                                     content_index=0, delta=text, logprobs=[])]

    def _call(self, piece: dict) -> list[dict]:
        fn = piece.get("function") or {}
        events: list[dict] = []
        index = self._calls.get(piece.get("index", 0))
        if index is None or index not in self._open:
            item = {"id": new_id("fc"), "type": "function_call", "status": "in_progress", "arguments": "",
                    "call_id": piece.get("id") or new_id("call"), "name": fn.get("name") or ""}
            index, events = self._add(item)
            self._calls[piece.get("index", 0)] = index
        if arguments := fn.get("arguments"):
            self._texts[index].append(arguments)
            events.append(self._event("response.function_call_arguments.delta", item_id=self.output[index]["id"],
                                      output_index=index, delta=arguments))
        return events

    def _close_all(self, status: str) -> list[dict]:
        events: list[dict] = []
        for index in self._open:
            events += self._close(index, status)
        self._open = []
        return events

    def _close(self, index: int, status: str) -> list[dict]:
        item, text = self.output[index], "".join(self._texts.pop(index))
        item["status"] = status
        at = {"item_id": item["id"], "output_index": index}
        events: list[dict] = []
        if item["type"] == "function_call":
            item["arguments"] = text
            events.append(self._event("response.function_call_arguments.done", **at, arguments=text))
        elif item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            events.append(self._event("response.reasoning_text.done", **at, content_index=0, text=text))
            events.append(self._event("response.content_part.done", **at, content_index=0, part=dict(part)))
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            events.append(self._event("response.output_text.done", **at, content_index=0, text=text, logprobs=[]))
            events.append(self._event("response.content_part.done", **at, content_index=0, part=copy.deepcopy(part)))
        return events + [self._event("response.output_item.done", output_index=index, item=copy.deepcopy(item))]

    def _finish(self, d: Delta) -> list[dict]:
        cut = d.finish_reason == "length"
        events: list[dict] = []
        if not cut and not any(item["type"] in ("message", "function_call") for item in self.output):
            events += self._text("", "message")  # an empty answer is still an answer: output_text ""
        events += self._close_all("incomplete" if cut else "completed")
        prompt, completion = d.prompt_tokens or 0, d.completion_tokens or 0
        self.usage = {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": completion,
            # Deltas that carried reasoning: one per token on the local backends (harmony's headers not counted).
            "output_tokens_details": {"reasoning_tokens": min(self._reasoning_deltas, completion)},
            "total_tokens": prompt + completion,
        }
        if cut:
            self.status, self.incomplete = "incomplete", {"reason": "max_output_tokens"}
            return events + [self._event("response.incomplete", response=self.snapshot())]
        self.status = "completed"
        return events + [self._event("response.completed", response=self.snapshot())]


async def collect_response(deltas: AsyncIterator[Delta], builder: ResponseBuilder) -> dict:
    """Drain the generation into one Response object (non-streaming is the stream drained)."""
    async for d in deltas:
        builder.feed(d)
        if d.finish_reason:
            break
    if builder.status == "in_progress":  # the backend ended without a finish: as the chat route does, "stop"
        builder.feed(Delta(finish_reason="stop", prompt_tokens=0, completion_tokens=0))
    return builder.body()


async def response_events(first: Delta | None, rest: AsyncIterator[Delta], builder: ResponseBuilder) -> AsyncIterator[bytes]:
    """The typed SSE events of one response; an error after the start ends it with `error` and `response.failed`."""
    try:
        for event in builder.start():
            yield to_event_sse(event)
        if first is not None:
            for event in builder.feed(first):
                yield to_event_sse(event)
        if builder.status == "in_progress":
            async for d in rest:
                for event in builder.feed(d):
                    yield to_event_sse(event)
                if builder.status != "in_progress":
                    break
        if builder.status == "in_progress":
            for event in builder.feed(Delta(finish_reason="stop", prompt_tokens=0, completion_tokens=0)):
                yield to_event_sse(event)
    except APIError as e:
        for event in builder.fail(e):
            yield to_event_sse(event)
    except Exception:
        log.exception("stream failed")
        for event in builder.fail(GenerationFailed("Generation failed")):
            yield to_event_sse(event)
    finally:
        await rest.aclose()


def farewell(builder: ResponseBuilder, e: APIError) -> bytes:
    """What a stream cut by the shutdown's grace period ends with."""
    return b"".join(to_event_sse(event) for event in builder.fail(e))
