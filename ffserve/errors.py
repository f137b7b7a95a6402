"""Typed server errors and the one place that maps them to HTTP status codes and JSON bodies.

Every error body is ``{"error": "…"}``; under ``/v1/`` it is OpenAI's ``{"error": {"message", "type",
"param", "code"}}`` so that the ``openai`` client reads it, and under ``/v1/messages`` Anthropic's ``{"type":
"error", "error": {"type", "message"}}`` (:func:`error_body`, for the middleware's answers too).
Registry and runtime errors become server errors only through :func:`mapped_error` (the caller says
the message, the map the status).
"""

from __future__ import annotations

import enum
import logging
import sys

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import MediaTooLarge, RequestRejected, UnsupportedSchema
from ffserve.encoding import JSONResponse
from registry.artifact import ArtifactError
from registry.errors import AuthError, RegistryError, RemoteError, SignatureError
from registry.reference import ReferenceError
from registry.select import SelectionError
from registry.store import NotFoundError, StoreError

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


class InsufficientStorage(ServeError):
    """The store's disk cannot hold what is being uploaded."""

    status, kind = 507, "insufficient_storage_error"


class Blame(enum.Enum):
    """Whose fault an error without a status of its own is (a store, artifact or value error)."""

    SERVER = "server"  # reading the local store: a broken stored model is a 500
    REGISTRY = "registry"  # a push or pull: a bad artifact or a failing registry is a 502, a bad ask a 400
    CLIENT = "client"  # what the client asked to write (a copy's name): a 400


# The one map from registry and runtime errors to HTTP, most specific first: the type decides.
_BY_TYPE: tuple[tuple[type[BaseException], type[ServeError]], ...] = (
    (SignatureError, Forbidden),  # FF_VERIFY_KEY / FF_REQUIRE_SIGNATURE refused it (docs/delivery.md)
    (AuthError, Unauthorized),
    (NotFoundError, ModelNotFound),
    (ReferenceError, BadRequest),
    (SelectionError, BadRequest),  # no variant, or several, fit: the client must say which
    (RemoteError, BadRequest),  # a push or pull that cannot be done as asked
    (MediaTooLarge, BodyTooLarge),  # an image or clip over the bytes or pixels allowed, audio too long: 413
    (UnsupportedSchema, BadRequest),  # a JSON schema feature constrained decoding cannot enforce, named
    (RequestRejected, BadRequest),
    (BackendUnavailable, NotAvailable),
    (RegistryError, BadGateway),  # an unreachable, failing or misbehaving registry
)


def _upstream(exc: BaseException) -> bool:
    """An error of a registry's content or transport (requests is loaded only once a transfer ran)."""
    requests = sys.modules.get("requests")
    return isinstance(exc, ArtifactError) or (
        requests is not None and isinstance(exc, requests.RequestException)
    )


def mapped_error(exc: BaseException, message: str, blame: Blame = Blame.SERVER) -> ServeError:
    """The server error that answers registry or runtime error ``exc`` with ``message``.

    The status comes from ``exc``'s type (:data:`_BY_TYPE`); a store, artifact or value error has none
    of its own, so ``blame`` decides it (and under :attr:`Blame.CLIENT` every store or value error is
    the client's 400, a missing blob while tagging included). A :class:`ServeError` is returned as is.
    """
    if isinstance(exc, ServeError):
        return exc
    if blame is Blame.CLIENT and isinstance(exc, StoreError | ValueError):
        return BadRequest(message)
    for kind, error in _BY_TYPE:
        if isinstance(exc, kind):
            return error(message)
    if blame is Blame.REGISTRY:
        if isinstance(exc, ValueError | LookupError):  # a bad reference or key
            return BadRequest(message)
        if _upstream(exc):
            return BadGateway(message)
    return ServeError(message)


# The same errors over gRPC (ffserve.grpc_server): the HTTP status decides the gRPC status code, by name
# (grpc is imported only by the gRPC server). A status not listed is INTERNAL, as a 500 is a bug.
GRPC_CODES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    507: "RESOURCE_EXHAUSTED",
}


def grpc_status(exc: BaseException) -> tuple[str, str]:
    """The gRPC status code's name (``grpc.StatusCode`` member) and the message answering ``exc``."""
    err = mapped_error(exc, str(exc))
    code = GRPC_CODES.get(err.status)
    if code is None:
        return "INTERNAL", f"internal error: {type(exc).__name__}: {err.message}"
    return code, err.message


# Anthropic's error types (https://docs.anthropic.com/en/api/errors) for the kinds that differ.
_ANTHROPIC_KIND = {
    "server_error": "api_error",
    "not_implemented_error": "api_error",
    "upstream_error": "api_error",
    "insufficient_memory_error": "api_error",
}


def anthropic_route(path: str) -> bool:
    """Whether ``path`` is one of Anthropic's Messages API routes (errors in Anthropic's shape)."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


def error_body(path: str, status: int, message: str, kind: str) -> dict[str, object]:
    """The error body of the route family ``path`` belongs to: Anthropic's ``{"type": "error",
    "error": {"type", "message"}}``, OpenAI's ``{"error": {"message", "type", "param", "code"}}`` under
    ``/v1/`` (``code`` is a string or null in OpenAI's schema and ff has no codes: null; the status is
    the HTTP status's), else Ollama's ``{"error": "…"}``."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # a client's lone surrogates
    if anthropic_route(path):
        kind = "request_too_large" if status == 413 else _ANTHROPIC_KIND.get(kind, kind)
        return {"type": "error", "error": {"type": kind, "message": message}}
    if path.startswith("/v1/"):
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return {"error": message}


def error_response(
    request: Request, status: int, message: str, kind: str, headers: dict[str, str]
) -> Response:
    body = error_body(request.url.path, status, message, kind)
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
    return await serve_error(request, mapped_error(exc, str(exc)))


EXCEPTION_HANDLERS = {
    ServeError: serve_error,
    RequestRejected: rejected,
    HTTPException: http_error,
    Exception: unexpected_error,
}
