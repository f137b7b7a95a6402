"""The one map from registry and runtime errors to HTTP statuses (``ffserve.errors.mapped_error``)."""

from __future__ import annotations

import pytest
import requests

from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.runtime import RequestRejected, UnsupportedSchema
from ffserve.errors import (
    GRPC_CODES,
    BadRequest,
    Blame,
    InsufficientMemory,
    ModelNotFound,
    Overloaded,
    ServeError,
    Unauthorized,
    error_body,
    grpc_status,
    mapped_error,
)
from registry.artifact import ArtifactError
from registry.errors import AuthError, NetworkError, RegistryError, RemoteError, SignatureError
from registry.reference import ReferenceError
from registry.select import SelectionError
from registry.store import NotFoundError, StoreError

ANY = (Blame.SERVER, Blame.REGISTRY)


@pytest.mark.parametrize(
    ("exc", "blames", "status"),
    [
        (SignatureError("unsigned"), ANY, 403),
        (AuthError("who are you"), ANY, 401),
        (NotFoundError("no such model"), ANY, 404),
        (ReferenceError("bad name"), ANY, 400),
        (SelectionError("no variant matches"), ANY, 400),
        (RemoteError("cannot push a partial model"), ANY, 400),
        (RequestRejected("bad option"), ANY, 400),
        (UnsupportedSchema("format: the JSON schema uses not, …", "not"), ANY, 400),
        (BackendUnavailable("pip install it"), ANY, 501),
        (NetworkError("unreachable"), ANY, 502),
        (RegistryError("the registry said 500"), ANY, 502),
        (ArtifactError("bad manifest"), (Blame.SERVER,), 500),  # the stored model is broken
        (ArtifactError("bad manifest"), (Blame.REGISTRY,), 502),  # the registry sent it
        (ArtifactError("tag too long"), (Blame.CLIENT,), 400),  # the client's name
        (NotFoundError("blob missing"), (Blame.CLIENT,), 400),
        (StoreError("disk"), (Blame.SERVER, Blame.REGISTRY), 500),
        (ValueError("bad key"), (Blame.REGISTRY, Blame.CLIENT), 400),
        (ValueError("odd"), (Blame.SERVER,), 500),
        (requests.ConnectionError("refused"), (Blame.REGISTRY,), 502),
        (RuntimeFailure("cannot load"), ANY, 500),
    ],
)
def test_the_type_decides_the_status_and_the_caller_the_message(
    exc: BaseException, blames: tuple[Blame, ...], status: int
) -> None:
    for blame in blames:
        err = mapped_error(exc, "what went wrong", blame)
        assert (err.status, err.message) == (status, "what went wrong"), blame


def test_a_server_error_passes_through() -> None:
    err = ModelNotFound("model 'x' not found")
    assert mapped_error(err, "ignored") is err
    assert isinstance(mapped_error(OSError("disk"), "m"), ServeError)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (Unauthorized("key"), "UNAUTHENTICATED"),
        (ModelNotFound("nope"), "NOT_FOUND"),
        (NotFoundError("no such model"), "NOT_FOUND"),
        (BadRequest("bad tensor"), "INVALID_ARGUMENT"),
        (RequestRejected("input X: 8 values for a [3, 4] tensor"), "INVALID_ARGUMENT"),
        (Overloaded("queue full"), "UNAVAILABLE"),
        (InsufficientMemory("too big"), "RESOURCE_EXHAUSTED"),
        (BackendUnavailable("pip install it"), "UNIMPLEMENTED"),
        (SignatureError("unsigned"), "PERMISSION_DENIED"),
        (KeyError("a bug"), "INTERNAL"),
    ],
)
def test_grpc_codes_follow_the_http_map(exc: Exception, code: str) -> None:
    """gRPC's status comes from the same map (by HTTP status), so the protocols cannot disagree."""
    import grpc

    got, message = grpc_status(exc)
    assert got == code and grpc.StatusCode[got].name == code
    assert (str(exc.args[0]) in message) and (got != "INTERNAL" or message.startswith("internal error"))
    assert set(GRPC_CODES.values()) <= set(grpc.StatusCode.__members__)


@pytest.mark.parametrize(
    ("path", "status", "kind", "body"),
    [
        ("/api/chat", 404, "not_found_error", {"error": "gone"}),
        ("/v1/chat/completions", 404, "not_found_error",
         {"error": {"message": "gone", "type": "not_found_error", "param": None, "code": None}}),
        ("/v1/messages", 404, "not_found_error",
         {"type": "error", "error": {"type": "not_found_error", "message": "gone"}}),
        ("/v1/messages/count_tokens", 413, "invalid_request_error",
         {"type": "error", "error": {"type": "request_too_large", "message": "gone"}}),
        ("/v1/messages", 502, "upstream_error",
         {"type": "error", "error": {"type": "api_error", "message": "gone"}}),
        ("/v1/messagesx", 400, "invalid_request_error",
         {"error": {"message": "gone", "type": "invalid_request_error", "param": None, "code": None}}),
    ],
)
def test_error_bodies_per_route_family(path: str, status: int, kind: str, body: object) -> None:
    assert error_body(path, status, "gone", kind) == body
