"""Thin routes: POST /api, /api/gpt-oss-2t, /v1/chat/completions; GET /api (health), /v1/models."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from gptoss_space.errors import APIError, ErrorStyle, MethodNotAllowed, NotFound
from gptoss_space.http.admission import admit
from gptoss_space.http.answer import answer
from gptoss_space.http.io import Shutdown, read_body, shutting_down
from gptoss_space.protocol.answer import collect, sse_events
from gptoss_space.protocol.request import now_unix, parse_body, request_body_doc, validate_request
from gptoss_space.protocol.sse import to_sse
from gptoss_space.ratelimit.client_ip import TrustedProxies
from gptoss_space.service import ChatService

log = logging.getLogger(__name__)


def build_router(service: ChatService, shutdown: Shutdown | None = None) -> APIRouter:
    router = APIRouter()
    shutdown = shutdown or Shutdown(0)
    settings = service.settings
    trusted = TrustedProxies.from_settings(settings)

    async def chat(request: Request, *, style: ErrorStyle, stream_default: bool) -> Response:
        """Read, validate, admit, answer. A client that leaves at any step gets ClientGone (499, nobody reads it)."""
        raw = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_s)
        body = validate_request(parse_body(raw, max_bytes=settings.max_body_bytes), stream_default=stream_default)
        req = service.build(body)
        ticket = await admit(request, service, trusted, shutdown)
        model = service.model_name
        return await answer(
            request, service.start(req, ticket), stream=body.stream,
            collect=lambda g: collect(g, model),
            events=lambda first, g: sse_events(first, g, model=model, style=style, include_usage=body.include_usage),
            farewell=to_sse(shutting_down().body(style)), shutdown=shutdown, write_timeout=settings.stream_write_timeout_s,
        )

    body_doc = request_body_doc()

    @router.post("/api", tags=["chat"], summary="Chat completion (seed contract; streams by default)", openapi_extra=body_doc)
    @router.post("/api/gpt-oss-2t", tags=["chat"], summary="Alias of POST /api", openapi_extra=body_doc)
    async def seed_chat(request: Request) -> Response:
        return await chat(request, style="seed", stream_default=True)

    @router.post("/v1/chat/completions", tags=["openai"], summary="OpenAI-compatible chat completion", openapi_extra=body_doc)
    async def openai_chat(request: Request) -> Response:
        return await chat(request, style="openai", stream_default=False)

    @router.get("/api", tags=["health"], summary="Health check: status, model, backend, rate limits")
    @router.get("/api/gpt-oss-2t", tags=["health"], summary="Alias of GET /api")
    async def health(request: Request) -> JSONResponse:
        backend = service.backend
        await backend.check()
        info = backend.health()
        status = "ok" if backend.ready else ("error" if info.get("load_error") else "loading")
        if backend.ready and info.get("upstream_reachable") is False:
            status = "degraded"  # we are up, but the upstream does not answer
        body = {
            "status": status,
            "model": service.model_name,
            "backend": backend.kind,
            "details": info,
            "page": page.state if (page := getattr(request.app.state, "page", None)) else "off",
            "rate_limit": service.gate.stats(),
            "usage": service.stats(),
            "endpoints": ["POST /api", "POST /api/gpt-oss-2t", "POST /v1/chat/completions", "POST /v1/responses", "GET /v1/models"],
        }
        return JSONResponse(body, status_code=200 if backend.ready else 503)

    def model_card() -> dict:
        return {"id": service.model_name, "object": "model", "created": now_unix(), "owned_by": "gptoss-space"}

    @router.get("/v1/models", tags=["openai"], summary="The model this server serves")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @router.get("/v1/models/{model_id:path}", tags=["openai"], summary="One model")
    async def model(model_id: str) -> dict:
        if model_id != service.model_name:
            raise NotFound(f"The model '{model_id}' does not exist", param="model")
        return model_card()

    # Last: any other path or method under /api and /v1 gets our shape and status (404, or 405 with Allow),
    # not the page's: Gradio, mounted at /, would otherwise answer every one of them {"detail":"Not Found"}.
    @router.api_route("/api", methods=ANY_METHOD, include_in_schema=False)
    @router.api_route("/api/{rest:path}", methods=ANY_METHOD, include_in_schema=False)
    @router.api_route("/v1", methods=ANY_METHOD, include_in_schema=False)
    @router.api_route("/v1/{rest:path}", methods=ANY_METHOD, include_in_schema=False)
    async def unknown(request: Request) -> Response:
        path = request.url.path
        allow: set[str] = set()
        for route in router.routes:
            if isinstance(route, APIRoute) and route.endpoint is not unknown and route.path_regex.match(path):
                allow |= route.methods or set()
        if allow:
            raise MethodNotAllowed(f"Method {request.method} is not allowed on {path}", allow=sorted(allow))
        raise NotFound(f"No route for {request.method} {path}")

    return router


ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def error_style(path: str) -> ErrorStyle:
    return "openai" if path.startswith("/v1") else "seed"


def error_response(request: Request, exc: APIError) -> JSONResponse:
    headers = {**getattr(request.state, "rate_headers", {}), **exc.headers()}
    return JSONResponse(exc.body(error_style(request.url.path)), status_code=exc.status, headers=headers)
