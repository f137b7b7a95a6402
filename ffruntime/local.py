"""Load a tensor variant from its files before it is in the store (the build's verify stage).

``load_files(backend, files, settings)`` calls ``ffruntime.<backend>.load_files``: the same code the
server reaches through :func:`ffruntime.load`, given the layer filepath → path mapping directly.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ffruntime import runtime_module
from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import Runtime
from ffruntime.settings import LoadSettings
from registry.choices import BACKENDS


async def load_files(backend: str, files: dict[str, Path], settings: LoadSettings) -> Runtime:
    name = runtime_module(backend)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise BackendUnavailable.missing(
            exc.name or "?", BACKENDS[backend]["extra"], f"the {backend} backend"
        ) from None
    runtime: Runtime = await module.load_files(files, settings)
    return runtime
