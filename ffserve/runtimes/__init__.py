"""Backends: each turns a stored variant (registry ``ModelFiles``) into a loaded :class:`Runtime`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ffserve.errors import NotAvailable
from ffserve.runtime import Runtime
from registry.artifact import ModelFiles, VariantRef

BACKENDS: dict[str, tuple[str, str]] = {
    # backend → (module with ``load``, the pip extra that provides it)
    "llamacpp": ("ffserve.runtimes.llamacpp", "ferrousforge[gguf]"),
}


@dataclass(frozen=True)
class LoadOptions:
    threads: int
    num_ctx: int
    num_parallel: int


async def load_runtime(variant: VariantRef, files: ModelFiles, opts: LoadOptions) -> Runtime:
    """Load ``files`` with the backend the variant names; a backend this server lacks is a clear error."""
    entry = BACKENDS.get(variant.backend)
    if entry is None:
        known = ", ".join(sorted(BACKENDS))
        raise NotAvailable(
            f"variant {variant.name} needs the {variant.backend!r} backend, which ff serve cannot run yet "
            f"(available: {known})"
        )
    module_name, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NotAvailable(f"the {variant.backend} backend needs {exc.name}: pip install '{extra}'") from None
    runtime: Runtime = await module.load(variant, files, opts)
    return runtime
