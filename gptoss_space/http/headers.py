"""A pure ASGI middleware for what every answer carries, and the page's placeholder until the page is up.

An HTML page is never stored by a cache: Gradio writes the URL it was reached by (Host, and
X-Forwarded-Host from a trusted proxy) into it, so one visitor's copy may not suit another.

Starlette's `@app.middleware("http")` (BaseHTTPMiddleware) relays every response, streamed chunks
included, through a memory stream and an extra task: about a millisecond a request on a small
CPU, and a hop per SSE chunk. This one only touches the `http.response.start` message.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class StandardHeaders:
    def __init__(self, app: ASGIApp, page=None) -> None:
        self.app, self.page = app, page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if headers.get("content-type", "").startswith("text/html"):
                    headers["Cache-Control"] = "no-store"
                    headers.add_vary_header("Host, X-Forwarded-Host, X-Forwarded-Proto")
            await send(message)

        page = self.page
        if page is not None and page.state != "ready" and scope["path"] == "/":
            return await page.placeholder()(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)
