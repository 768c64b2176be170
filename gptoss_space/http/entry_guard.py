"""The door every request goes through first, API and page alike: body size and time, forwarded host headers, uploads.

The API routes bounded their bodies, but the Gradio routes mounted at / had no limit: a 5 MB
system prompt through /gradio_api/call/chat stalled the server 4.7 s and grew it by 0.6-1.3 GB,
and /gradio_api/upload stored 200 MB in 0.6 s. Here, on every path, a body is read whole, within
`max_body_bytes` (413 past it, from Content-Length or counted as it streams) and
`body_read_timeout_s` (408), before any route sees it; the route then reads it from memory.

X-Forwarded-Host and X-Forwarded-Proto make Gradio's root URL, and from it the page's script and
API origins: from a peer that is not a trusted proxy they are dropped, so nobody can make the page
point elsewhere (and a cache in front could keep such a page for everyone).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptoss_space.errors import APIError, Forbidden, HeadersTooLarge
from gptoss_space.http.io import ClientGone, read_body
from gptoss_space.http.routes import error_style
from gptoss_space.ratelimit.client_ip import TrustedProxies, parse_ip

log = logging.getLogger(__name__)

# Headers only a trusted proxy may set: Gradio builds the page's URLs from them.
FORWARDED_HOST_HEADERS = (b"x-forwarded-host", b"x-forwarded-proto", b"forwarded")
# The page has no file input: nothing needs Gradio's upload route, and anonymous files are a liability.
UPLOAD_PATHS = ("/gradio_api/upload",)


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip() not in (b"", b"0"):
            return True
    return False


class EntryGuard:
    def __init__(self, app: ASGIApp, settings, trusted: TrustedProxies) -> None:
        self.app, self.settings, self.trusted = app, settings, trusted

    def _trusted_peer(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return self.trusted.trust_unix
        addr = parse_ip(client[0])
        return addr is not None and self.trusted.contains_addr(addr)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._trusted_peer(scope):
            headers = scope["headers"]
            if any(name in FORWARDED_HOST_HEADERS for name, _ in headers):
                scope = {**scope, "headers": [(n, v) for n, v in headers if n not in FORWARDED_HOST_HEADERS]}
        size = sum(len(name) + len(value) for name, value in scope["headers"])
        if size > self.settings.max_header_bytes:
            # h11 refuses a head past the bound while it is still arriving; one that arrived in a single read
            # (a 100 KB X-Forwarded-For over loopback) is parsed already, and is refused here, before any route.
            exc = HeadersTooLarge(f"Request headers too large: {size} bytes; the limit is {self.settings.max_header_bytes}")
            return await self._refuse(scope, receive, send, exc)
        if scope["path"].rstrip("/") in UPLOAD_PATHS:
            return await self._refuse(scope, receive, send, Forbidden("Uploads are not accepted here"))
        if not _has_body(scope):
            return await self.app(scope, receive, send)
        s = self.settings
        try:
            body = await read_body(Request(scope, receive), s.max_body_bytes, s.body_read_timeout_s)
        except ClientGone:
            return
        except APIError as exc:
            return await self._refuse(scope, receive, send, exc)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # from here on only http.disconnect comes

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: APIError) -> None:
        # The rest of the body may still be on its way: this connection cannot carry another request.
        headers = {**exc.headers(), "Connection": "close"}
        response = JSONResponse(exc.body(error_style(scope["path"])), status_code=exc.status, headers=headers)
        await response(scope, receive, send)
