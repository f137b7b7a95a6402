"""The one map from registry and runtime errors to HTTP statuses (``ffserve.errors.mapped_error``)."""

from __future__ import annotations

import pytest
import requests

from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.runtime import RequestRejected, UnsupportedSchema
from ffserve.errors import Blame, ModelNotFound, ServeError, mapped_error
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
