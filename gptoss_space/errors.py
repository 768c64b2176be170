"""A small error hierarchy and its one mapping to HTTP status and body."""

from __future__ import annotations

from typing import Literal

ErrorStyle = Literal["seed", "openai"]


class APIError(Exception):
    """An error a client sees. `message` is safe to show: no internals, no secrets."""

    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, int(-(-self.retry_after // 1))))}

    def body(self, style: ErrorStyle) -> dict:
        if style == "seed":
            return {"error": self.message}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class HeadersTooLarge(APIError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class Forbidden(APIError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: list[str], **kw):
        super().__init__(message, **kw)
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Allow": ", ".join(self.allow)}


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class Overloaded(APIError):
    status = 503
    type = "server_error"
    code = "overloaded"


class ModelLoading(APIError):
    status = 503
    type = "server_error"
    code = "model_loading"


class UpstreamError(APIError):
    """The upstream failed (502), is unreachable (503) or timed out (504)."""

    type = "upstream_error"

    def __init__(self, message: str, *, status: int = 502, **kw):
        super().__init__(message, **kw)
        self.status = status


class UpstreamRejected(APIError):
    """The upstream refused the request with a 4xx: passed back with its message."""

    type = "invalid_request_error"

    def __init__(self, message: str, *, status: int = 400, **kw):
        super().__init__(message, **kw)
        self.status = status


class GenerationTimeout(APIError):
    status = 504
    type = "server_error"
    code = "timeout"


class GenerationFailed(APIError):
    status = 500
    type = "server_error"
    code = "generation_failed"
