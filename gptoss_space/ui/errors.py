"""The page's endpoints answer a refusal with its own status, as /api does, not Gradio's blanket 500.

Gradio's direct-call route (/gradio_api/run/<name>) answers every exception of the function with
500, a bad parameter or a rate-limit refusal alike, and an unknown endpoint name escapes as an
exception (500 and two tracebacks). The chat function records the APIError it turned into a
gr.Error on the HTTP request behind the call; ErrorStatus puts that error's status (and
Retry-After) on the answer. Queued calls (/gradio_api/call/<name>, the page itself) answer 200 and
deliver the error as an event, which Gradio shows as a readable message.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptoss_space.errors import APIError, NotFound

STATE_KEY = "gptoss_page_error"


def record(request, err: APIError) -> None:
    """Remember `err` on the live HTTP request behind a gr.Request, when there is one (a direct call)."""
    live = getattr(request, "request", None) if request is not None else None
    scope = getattr(live, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("state"), dict):
        scope["state"][STATE_KEY] = (err.status, err.headers())


class ErrorStatus:
    """Turns Gradio's 500 for a call the function refused into the refusal's own status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 500:
                recorded = (scope.get("state") or {}).get(STATE_KEY)
                if recorded is not None:
                    status, extra = recorded
                    message = {**message, "status": status}
                    headers = MutableHeaders(scope=message)
                    for name, value in extra.items():
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_status)


async def unknown_endpoint(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(NotFound("No such page endpoint; see /gradio_api/info").body("seed"), status_code=404)


def install(gradio_app) -> None:
    """Before the Gradio app serves its first request (its middleware stack is built then)."""
    from gradio.route_utils import FnIndexInferError

    gradio_app.add_middleware(ErrorStatus)
    gradio_app.add_exception_handler(FnIndexInferError, unknown_endpoint)
