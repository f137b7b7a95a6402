"""Load a stored variant and run it: the one place every backend is written, for verify and serve alike.

``load(variant, files, settings)`` picks the backend module ``ffruntime.<backend>`` (the backend names
and the pip extra each needs come from :data:`registry.choices.BACKENDS`) and returns a loaded
:class:`~ffruntime.runtime.Runtime`. A backend this installation lacks raises
:class:`~ffruntime.errors.BackendUnavailable` naming what to install.
"""

from __future__ import annotations

import importlib

from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import Runtime
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef
from registry.choices import BACKENDS

__all__ = ["BackendUnavailable", "LoadSettings", "Runtime", "load", "runtime_module"]


def runtime_module(backend: str) -> str:
    """The module that implements ``backend`` (``ffruntime.<backend>``)."""
    if backend not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {backend!r} (known: {', '.join(sorted(BACKENDS))})")
    return f"ffruntime.{backend}"


async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> Runtime:
    """Load ``files`` with the backend the variant names."""
    name = runtime_module(variant.backend)
    extra = BACKENDS[variant.backend]["extra"]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            raise BackendUnavailable(
                f"variant {variant.name} needs the {variant.backend!r} backend, which this version of ff "
                "cannot run yet"
            ) from None
        raise BackendUnavailable.missing(
            exc.name or "?", extra, f"the {variant.backend} backend (variant {variant.name})"
        ) from None
    runtime: Runtime = await module.load(variant, files, settings)
    return runtime
