"""What loading or running a stored variant can fail with, for every caller (verify stage, server, CLI).

- :class:`BackendUnavailable`: the backend's Python package (or the backend itself) is not installed
  here; the message names what to install.
- :class:`RuntimeFailure`: the backend is there but cannot load or evaluate this model.

Request-level refusals (:class:`ffruntime.runtime.RequestRejected`) live with the protocols.
"""

from __future__ import annotations


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; ``str(exc)`` says what to install."""

    def __init__(self, message: str, *, package: str | None = None, extra: str | None = None) -> None:
        super().__init__(message)
        self.package = package
        self.extra = extra

    @classmethod
    def missing(cls, package: str, extra: str, purpose: str) -> BackendUnavailable:
        return cls(
            f"{purpose} needs the Python package {package!r}, which is not installed: "
            f"pip install 'ferrousforge[{extra}]'",
            package=package,
            extra=extra,
        )


class RuntimeFailure(RuntimeError):
    """A model could not be loaded or evaluated (the message says which file and why)."""
