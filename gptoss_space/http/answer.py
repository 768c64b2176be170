"""An admitted generation as the HTTP answer: one JSON completion, or an SSE stream that closes it however it ends."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gptoss_space.errors import ErrorStyle
from gptoss_space.http.io import ReleasingStreamingResponse, Shutdown, shutting_down, until_disconnect
from gptoss_space.protocol.answer import collect, sse_events
from gptoss_space.protocol.request import ChatRequest
from gptoss_space.protocol.sse import SSE_HEADERS, to_sse
from gptoss_space.service import Generation


async def answer(
    request: Request,
    generation: Generation,
    body: ChatRequest,
    *,
    model: str,
    style: ErrorStyle,
    shutdown: Shutdown,
    write_timeout: float | None,
) -> Response:
    """Raises ClientGone when the client leaves before the first byte; the generation is closed on every path."""
    if not body.stream:
        async with generation:
            completion = await until_disconnect(request, collect(generation, model), stop=shutdown.over)
        return JSONResponse(completion, headers=generation.headers)
    try:
        # The first delta before any byte: errors up to then (context too long, overload) keep their status.
        first = await until_disconnect(request, anext(generation, None), stop=shutdown.over)
    except BaseException:
        await generation.aclose()
        raise
    events = sse_events(first, generation, model=model, style=style, include_usage=body.include_usage)
    return ReleasingStreamingResponse(
        events,
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **generation.headers},
        on_close=generation.aclose,
        shutdown=shutdown,
        farewell=to_sse(shutting_down().body(style)),
        write_timeout=write_timeout,
    )
