"""The exit codes of ``ff`` commands (docs/delivery.md, "Exit codes"), so pipelines can branch on them.

======  ==========================================================================================
code    meaning
======  ==========================================================================================
0       success
1       an error: for ``ff check`` (and ``ff build`` before it builds) the Modelfile has errors
2       usage error (unknown option, bad argument): click's own code
3       ``ff build``: a variant failed the Modelfile's VERIFY thresholds; nothing was stored
4       authentication: the registry wants credentials, or rejected the ones given
5       network: the registry cannot be reached, timed out, failed TLS, or broke a transfer off
6       signature: unsigned, signed by another key, tampered with, or FF_REQUIRE_SIGNATURE without a key
======  ==========================================================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

OK = 0
ERROR = 1
USAGE = 2
VERIFY_FAILED = 3
AUTH = 4
NETWORK = 5
SIGNATURE = 6


class Failure(click.ClickException):
    """A ``ff`` error with its exit code (click prints ``Error: <message>`` and exits with it)."""

    def __init__(self, message: str, code: int = ERROR) -> None:
        super().__init__(message)
        vars(self)["exit_code"] = code  # click reads exit_code when the command ends


def code_for(exc: BaseException) -> int:
    """The exit code for an expected error (registry, signature, store, network)."""
    from registry.http import AuthError, NetworkError
    from registry.signing import KeyFormatError, SignatureError

    if isinstance(exc, SignatureError | KeyFormatError):
        return SIGNATURE
    if isinstance(exc, AuthError):
        return AUTH
    if isinstance(exc, NetworkError):
        return NETWORK
    return ERROR


@contextmanager
def expected_errors() -> Iterator[None]:
    """Registry, store, reference, signature and variant-choice errors end the command with their
    message and exit code."""
    from registry.reference import ReferenceError
    from registry.select import SelectionError
    from registry.signing import KeyFormatError
    from registry.store import StoreError

    try:
        yield
    except (StoreError, ReferenceError, SelectionError, KeyFormatError, OSError) as exc:
        raise Failure(str(exc), code_for(exc)) from None  # RegistryError is an OSError
