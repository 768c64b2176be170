"""The app factory: FastAPI with CORS, error handlers, lifespan, the API routes and the Gradio page."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from gptoss_space.backends import make_backend
from gptoss_space.backends.base import Backend
from gptoss_space.errors import APIError, GenerationFailed, MethodNotAllowed, NotFound
from gptoss_space.http.access_log import AccessLog
from gptoss_space.http.entry_guard import EntryGuard
from gptoss_space.http.headers import StandardHeaders
from gptoss_space.http.io import ClientGone, Shutdown
from gptoss_space.http.responses_route import build_responses_router
from gptoss_space.http.routes import build_router, error_response
from gptoss_space.ratelimit.client_ip import TrustedProxies
from gptoss_space.ratelimit.fifo import make_gate
from gptoss_space.service import ChatService
from gptoss_space.settings import Settings
from gptoss_space.ui.mount import PageMount

log = logging.getLogger(__name__)

# 499: the client closed the connection (nginx's convention); nobody reads this answer.
CLIENT_CLOSED = 499

EXPOSED_HEADERS = [
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Queue-Time",
]


def create_app(settings: Settings | None = None, backend: Backend | None = None, *, with_ui: bool = True) -> FastAPI:
    settings = settings or Settings()
    backend = backend or make_backend(settings)
    gate = make_gate(settings)
    service = ChatService(settings, backend, gate)
    shutdown = Shutdown(settings.shutdown_grace_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gate.start()
        # SIGTERM: queued requests are refused, running ones get shutdown_grace_s, streams end with an event.
        shutdown.install()
        # Load in the background: the port opens at once and GET /api says "loading" until ready.
        loading = asyncio.create_task(_start_backend(backend))
        if page is not None:
            page.start(after=loading)  # the Gradio import would slow the model load down: after it (or 10 s)
        try:
            yield
        finally:
            if page is not None:
                await page.stop()
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            shutdown.uninstall()
            await backend.close()
            await gate.close()

    app = FastAPI(
        title="gptoss-space",
        description="A free, rate-limited, OpenAI-compatible chat API.",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.shutdown = shutdown
    page = PageMount(app, service, settings) if with_ui else None
    app.state.page = page
    # Innermost of ours: its 413/408/403 answers still get CORS and the standard headers.
    app.add_middleware(EntryGuard, settings=settings, trusted=TrustedProxies.from_settings(settings))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=EXPOSED_HEADERS,
        max_age=86400,
    )

    app.add_middleware(StandardHeaders, page=page)
    app.add_middleware(AccessLog)  # outermost of ours: sees every answer, its last byte included

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return error_response(request, exc)

    @app.exception_handler(ClientGone)
    async def on_client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        response = error_response(request, GenerationFailed("Internal server error"))
        # This handler answers outside the middleware stack, and uvicorn drops the connection after it:
        # say so, or the client's next request on it is reset.
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Connection"] = "close"
        return response

    @app.exception_handler(404)
    async def on_not_found(request: Request, exc) -> JSONResponse:
        return error_response(request, NotFound(f"No route for {request.method} {request.url.path}"))

    @app.exception_handler(405)
    async def on_bad_method(request: Request, exc) -> JSONResponse:
        allow = [m.strip() for m in (getattr(exc, "headers", None) or {}).get("Allow", "").split(",") if m.strip()]
        return error_response(request, MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}", allow=allow))

    app.include_router(build_responses_router(service, shutdown))  # before build_router's catch-all for /v1
    app.include_router(build_router(service, shutdown))
    return app


async def _start_backend(backend: Backend) -> None:
    try:
        await backend.start()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("backend failed to start")
