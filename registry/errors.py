"""What talking to a registry can fail with, in a module without the HTTP stack's imports.

``registry.http``, ``registry.remote`` and ``registry.signing`` raise these (and re-export them under
their old names); the server's one error map (``ffserve.errors.mapped_error``) can tell them apart
without loading oras and requests before the first pull.
"""

from __future__ import annotations


class RegistryError(OSError):
    """A registry refused a request, sent something unsafe, or could not be reached.

    An ``OSError`` like the network errors it often wraps, so callers that already handle I/O errors
    (the server's pull-on-demand) report it instead of crashing.
    """


class AuthError(RegistryError):
    """The registry wants credentials we do not have, or rejected the ones we sent."""


class NetworkError(RegistryError):
    """The registry could not be reached, timed out, failed TLS, or broke a transfer off."""


class RemoteError(RegistryError):
    """A push or pull that cannot be done as asked (bad reference, missing variants, unsafe content)."""


class SignatureError(RegistryError):
    """An artifact is unsigned, signed by another key, or its signature does not verify."""


class TransferInterrupted(RegistryError):
    """A push or pull stopped on request (SIGINT, SIGTERM) where it can resume: each upload after its
    chunk in flight, each download where it stood. Running the same command again continues."""
