"""Model names → a stored variant: a store reference (``smollm2``, ``smollm2:latest``), a variant tag
(``smollm2:latest-q8_0-cpu``) or a full remote reference; multi-variant models go through
:func:`registry.select.select_stored` with the server's ``--target`` / ``--quantize`` / ``--backend``
(strict, as for every caller: a model without a matching variant is a 400 listing its variants)."""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from ffserve.errors import Blame, ModelNotFound, NotAvailable, mapped_error
from registry.artifact import ModelFiles, VariantRef, open_variant
from registry.errors import SignatureError
from registry.reference import ReferenceError, parse_reference
from registry.select import SelectionError, select_stored
from registry.store import NotFoundError, Store, StoreError

Progress = Callable[[dict[str, object]], None]


@dataclass(frozen=True)
class Resolved:
    name: str  # canonical ``name:tag`` as given
    variant: VariantRef
    files: ModelFiles


@functools.lru_cache(maxsize=1024)  # every request names its model: parsing it each time cost ~20 µs
def canonical(name: str) -> str:
    try:
        ref = parse_reference(name)
    except ReferenceError as exc:
        raise mapped_error(exc, str(exc)) from None
    return str(ref)


def remote_module() -> ModuleType:
    """``registry.remote`` (pushes and pulls), or a 501 naming what is missing."""
    try:
        return importlib.import_module("registry.remote")
    except ImportError as exc:
        raise NotAvailable(
            f"pulling and pushing need registry.remote, which this installation lacks ({exc}); "
            "install ferrousforge[registry]"
        ) from None


def resolve(
    store: Store, name: str, *, target: str | None, quantize: str | None, backend: str | None = None
) -> Resolved:
    ref = canonical(name)
    try:
        chosen = select_stored(store, ref, target=target, quantize=quantize, backend=backend)
        return Resolved(ref, chosen, open_variant(store, chosen.descriptor.digest))
    except NotFoundError as exc:
        raise mapped_error(exc, f"model {ref!r} not found; pull it first (ff pull {ref}): {exc}") from None
    except SelectionError as exc:
        raise mapped_error(exc, f"{ref}: {exc}") from None
    except StoreError as exc:  # an ArtifactError too: the stored model is broken
        raise mapped_error(exc, f"{ref}: the stored model is unusable: {exc}") from None


def pull(
    store: Store,
    name: str,
    *,
    target: str | None,
    quantize: str | None,
    progress: Progress,
    insecure: bool = False,
    backend: str | None = None,
) -> None:
    """Pull ``name`` into the store through registry.remote (blocking; run it in a thread)."""
    remote = remote_module()
    ref = canonical(name)
    try:
        remote.pull(
            ref, store=store, target=target, quantize=quantize, backend=backend, progress=progress,
            insecure=insecure,
        )
    except (SelectionError, SignatureError) as exc:  # no variant, or several, fit; a refused signature
        raise mapped_error(exc, f"pull {ref}: {exc}", Blame.REGISTRY) from None
    except (StoreError, ValueError, OSError, RuntimeError) as exc:
        raise mapped_error(exc, f"pull {ref} failed: {exc}", Blame.REGISTRY) from None


async def resolve_or_pull(
    store: Store,
    name: str,
    *,
    target: str | None,
    quantize: str | None,
    allow_pull: bool,
    insecure: bool = False,
    backend: str | None = None,
) -> Resolved:
    sel = {"target": target, "quantize": quantize, "backend": backend}
    try:
        return await asyncio.to_thread(resolve, store, name, **sel)
    except ModelNotFound:
        if not allow_pull:
            raise
    await asyncio.to_thread(pull, store, name, progress=lambda _: None, insecure=insecure, **sel)
    return await asyncio.to_thread(resolve, store, name, **sel)
