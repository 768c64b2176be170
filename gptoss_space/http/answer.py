"""An admitted generation as the HTTP answer: one JSON body, or an SSE stream that closes it however it ends.

Both the chat routes and /v1/responses answer through `answer`; they differ only in how deltas
become a body (`collect`) or events (`events`) and in the last event of a stream cut by shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from gptoss_space.backends.base import Delta
from gptoss_space.http.io import ReleasingStreamingResponse, Shutdown, until_disconnect
from gptoss_space.protocol.sse import SSE_HEADERS
from gptoss_space.service import Generation


async def answer(
    request: Request,
    generation: Generation,
    *,
    stream: bool,
    collect: Callable[[Generation], Awaitable[dict]],
    events: Callable[[Delta | None, Generation], AsyncIterator[bytes]],
    farewell: bytes | Callable[[], bytes],
    shutdown: Shutdown,
    write_timeout: float | None,
) -> Response:
    """Raises ClientGone when the client leaves before the first byte; the generation is closed on every path."""
    if not stream:
        async with generation:
            body = await until_disconnect(request, collect(generation), stop=shutdown.over)
        return JSONResponse(body, headers=generation.headers)
    try:
        # The first delta before any byte: errors up to then (context too long, overload) keep their status.
        first = await until_disconnect(request, anext(generation, None), stop=shutdown.over)
    except BaseException:
        await generation.aclose()
        raise
    return ReleasingStreamingResponse(
        events(first, generation),
        media_type="text/event-stream",
        headers={**SSE_HEADERS, **generation.headers},
        on_close=generation.aclose,
        shutdown=shutdown,
        farewell=farewell,
        write_timeout=write_timeout,
    )
