"""Deltas into the wire formats: one JSON completion, or SSE chunks ending in [DONE].

Logprobs, when asked (Deltas whose `logprobs` is a list: at least the last one, []): the completion's
`choices[0].logprobs` is {"content": [every entry], "refusal": null}; each chunk whose delta
brings entries carries them in `choices[0].logprobs.content`. Not asked: no `logprobs` key (the
SDKs read null), as before.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from gptoss_space.backends.base import Delta
from gptoss_space.errors import APIError, ErrorStyle, GenerationFailed
from gptoss_space.protocol.request import chunk_body, completion_body, new_completion_id, now_unix, usage_body
from gptoss_space.protocol.sse import DONE, to_sse

log = logging.getLogger(__name__)


def _delta_fields(d: Delta) -> dict:
    out: dict = {}
    if d.reasoning:
        # vLLM/Ollama clients read `reasoning`, llama.cpp/DeepSeek clients `reasoning_content`.
        out["reasoning"] = out["reasoning_content"] = d.reasoning
    if d.content:
        out["content"] = d.content
    if d.tool_calls:
        out["tool_calls"] = d.tool_calls
    return out


def join_tool_calls(pieces: list[dict]) -> list[dict]:
    """Streamed call pieces into whole calls (message.tool_calls), in index order: arguments joined."""
    calls: dict[int, dict] = {}
    for piece in pieces:
        call = calls.setdefault(piece["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        if piece.get("id"):
            call["id"] = piece["id"]
        function = piece.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


async def collect(deltas: AsyncIterator[Delta], model: str) -> dict:
    """Drain the stream into one chat.completion body (non-streaming is the stream drained)."""
    content, reasoning, calls = [], [], []
    last = Delta(finish_reason="stop", prompt_tokens=0, completion_tokens=0)
    logprobs: list[dict] | None = None
    async for d in deltas:
        content.append(d.content)
        reasoning.append(d.reasoning)
        calls += d.tool_calls
        if d.logprobs is not None:
            logprobs = logprobs if logprobs is not None else []
            logprobs.extend(d.logprobs)
        if d.finish_reason:
            last = d
    body = completion_body(
        id=new_completion_id(),
        created=now_unix(),
        model=model,
        content="".join(content),
        reasoning="".join(reasoning),
        finish_reason=last.finish_reason,
        usage=usage_body(last.prompt_tokens or 0, last.completion_tokens or 0),
        tool_calls=join_tool_calls(calls),
    )
    if logprobs is not None:
        body["choices"][0]["logprobs"] = logprobs_body(logprobs)
    return body


def logprobs_body(entries: list[dict]) -> dict:
    return {"content": entries, "refusal": None}


async def sse_events(
    first: Delta | None, rest: AsyncIterator[Delta], *, model: str, style: ErrorStyle, include_usage: bool
) -> AsyncIterator[bytes]:
    """SSE chunks with one id; an error after the start is sent as a data: {"error": …} event."""
    cid, created = new_completion_id(), now_unix()
    role_sent = False

    def chunk(d: Delta) -> bytes | None:
        nonlocal role_sent
        fields = _delta_fields(d)
        if d.logprobs:
            fields.setdefault("content", "")  # the entries' text may still be held back (a stop sequence's start)
        if not fields:
            return None
        if not role_sent:
            fields = {"role": "assistant", **fields}
            role_sent = True
        body = chunk_body(id=cid, created=created, model=model, delta=fields)
        if d.logprobs:
            body["choices"][0]["logprobs"] = logprobs_body(d.logprobs)
        return to_sse(body)

    async def deltas() -> AsyncIterator[Delta]:
        if first is not None:
            yield first
        async for d in rest:
            yield d

    try:
        async for d in deltas():
            if (data := chunk(d)) is not None:
                yield data
            if d.finish_reason:
                if not role_sent:  # an empty answer still says who spoke
                    role_sent = True
                    yield to_sse(chunk_body(id=cid, created=created, model=model, delta={"role": "assistant", "content": ""}))
                yield to_sse(chunk_body(id=cid, created=created, model=model, finish_reason=d.finish_reason))
                if include_usage:
                    usage = usage_body(d.prompt_tokens or 0, d.completion_tokens or 0)
                    yield to_sse(chunk_body(id=cid, created=created, model=model, usage=usage, with_choice=False))
        yield DONE
    except APIError as e:
        yield to_sse(e.body(style))
    except Exception:
        log.exception("stream failed")
        yield to_sse(GenerationFailed("Generation failed").body(style))
    finally:
        await rest.aclose()
