"""Typed server errors and the one place that maps them to HTTP status codes and JSON bodies.

Every error body is ``{"error": "…"}``; under ``/v1/`` it is OpenAI's ``{"error": {"message", "type",
"code"}}`` so that the ``openai`` client reads it.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ffruntime.runtime import RequestRejected
from ffserve.encoding import JSONResponse

log = logging.getLogger("ffserve")


class ServeError(Exception):
    status = 500
    kind = "server_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServeError):
    status, kind = 400, "invalid_request_error"


class Unauthorized(ServeError):
    status, kind = 401, "authentication_error"


class Forbidden(ServeError):
    """A policy refuses the request (a model without a valid signature under FF_VERIFY_KEY)."""

    status, kind = 403, "permission_error"


class ModelNotFound(ServeError):
    status, kind = 404, "not_found_error"


class NotSupported(ServeError):
    """The model cannot do what was asked (e.g. embeddings from a model without them)."""

    status, kind = 400, "invalid_request_error"


class BodyTooLarge(ServeError):
    status, kind = 413, "invalid_request_error"


class Overloaded(ServeError):
    status, kind = 503, "overloaded_error"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class NotAvailable(ServeError):
    """A feature needs a component that is not installed (e.g. registry.remote for pulls)."""

    status, kind = 501, "not_implemented_error"


class BadGateway(ServeError):
    """An upstream (an OCI registry) failed or could not be reached; the message says why."""

    status, kind = 502, "upstream_error"


class InsufficientMemory(ServeError):
    status, kind = 507, "insufficient_memory_error"


def error_response(
    request: Request, status: int, message: str, kind: str, headers: dict[str, str]
) -> Response:
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # a client's lone surrogates
    if request.url.path.startswith("/v1/"):
        body: dict[str, object] = {"error": {"message": message, "type": kind, "code": status}}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


async def serve_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServeError)
    return error_response(request, exc.status, exc.message, exc.kind, exc.headers)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(request, exc.status_code, str(exc.detail), kind, dict(exc.headers or {}))


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, f"internal error: {type(exc).__name__}: {exc}", "server_error", {})


async def rejected(request: Request, exc: Exception) -> Response:
    return error_response(request, 400, str(exc), "invalid_request_error", {})


EXCEPTION_HANDLERS = {
    ServeError: serve_error,
    RequestRejected: rejected,
    HTTPException: http_error,
    Exception: unexpected_error,
}
