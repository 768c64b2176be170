"""One access-log line per answer, written once the answer has ended (uvicorn's own access log is off).

uvicorn logs a request as its response starts: formatting and writing that line took about 0.2 ms
before the first byte of every answer on a small CPU, in the path of a streamed answer's time to
first byte. This pure ASGI middleware logs after the last byte instead, and says more: the status,
the bytes sent and how long the answer took. It follows GPTOSS_LOG_LEVEL (INFO shows it). Paths
are logged without their query string, which may carry a key.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("gptoss_space.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, sent = 0, 0

        async def send_counted(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception:
            status = status or 500  # the error handler outside this middleware answers
            raise
        finally:
            host, port = scope.get("client") or ("-", 0)
            log.info(
                '%s:%d - "%s %s HTTP/%s" %s, %d bytes in %.3f s',
                host, port, scope["method"], scope["path"], scope.get("http_version", "1.1"),
                status or "- (client left before an answer)", sent, time.perf_counter() - started,
            )
