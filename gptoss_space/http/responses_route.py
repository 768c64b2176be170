"""POST /v1/responses: the OpenAI Responses API on the chat route's own path.

Read the body, translate it to a chat request (protocol/responses.py: one validator, one set of
bounds), build (date injection, limits), admit (the same gate), start the generation, and answer
one Response object or its typed event stream (protocol/responses_answer.py). Refusals name the
Responses field. No state is kept: nothing can be retrieved, cancelled or continued later.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gptoss_space.errors import InvalidRequest, MethodNotAllowed
from gptoss_space.http.admission import admit
from gptoss_space.http.answer import answer
from gptoss_space.http.io import Shutdown, read_body, shutting_down
from gptoss_space.protocol.request import parse_body
from gptoss_space.protocol.responses import ResponsesRequest, validate_responses
from gptoss_space.protocol.responses_answer import ResponseBuilder, collect_response, farewell, response_events
from gptoss_space.ratelimit.client_ip import TrustedProxies
from gptoss_space.service import ChatService

OTHER_METHODS = ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_responses_router(service: ChatService, shutdown: Shutdown | None = None) -> APIRouter:
    router = APIRouter()
    shutdown = shutdown or Shutdown(0)
    settings = service.settings
    trusted = TrustedProxies.from_settings(settings)
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": _schema()}}}}

    @router.post("/v1/responses", tags=["openai"], summary="OpenAI Responses API (stateless)", openapi_extra=body_doc)
    async def responses(request: Request) -> Response:
        raw = await read_body(request, settings.max_body_bytes, settings.body_read_timeout_s)
        translation, chat = validate_responses(parse_body(raw, max_bytes=settings.max_body_bytes))
        try:
            req = service.build(chat)
            ticket = await admit(request, service, trusted, shutdown)
            builder = ResponseBuilder(translation.echo(req.temperature, req.top_p, chat.effort), model=service.model_name)
            return await answer(
                request, service.start(req, ticket), stream=chat.stream,
                collect=lambda g: collect_response(g, builder),
                events=lambda first, g: response_events(first, g, builder),
                farewell=lambda: farewell(builder, shutting_down()), shutdown=shutdown,
                write_timeout=settings.stream_write_timeout_s,
            )
        except InvalidRequest as e:  # the bounds, and a context that is too long: named as the Responses field
            raise translation.rename(e) from None

    @router.api_route("/v1/responses", methods=OTHER_METHODS, include_in_schema=False)
    async def other_method(request: Request) -> Response:
        raise MethodNotAllowed(f"Method {request.method} is not allowed on /v1/responses", allow=["POST"])

    return router


def _schema() -> dict:
    """ResponsesRequest's JSON schema with its $defs inlined (self-contained, as the chat routes document theirs)."""
    schema = ResponsesRequest.model_json_schema(by_alias=True)
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        return [inline(v) for v in node] if isinstance(node, list) else node

    return inline(schema)
