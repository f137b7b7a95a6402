"""Ollama's model-creation routes: ``HEAD``/``POST /api/blobs/:digest`` and ``POST /api/create``.

A client uploads the files a model is made of as blobs (the ``ollama`` client's ``create_blob``), then
asks ``/api/create`` for a model ``from`` an existing one or from those ``files`` (name → digest), with
what a Modelfile would say (``system``, ``template``, ``parameters``, ``messages``, ``license``,
``adapters``) and an optional ``quantize``. The request becomes Modelfile instructions, which the
server's :class:`~ffserve.builder.Builder` (ffbuild's pipeline, wired in by ``ff serve``) builds into a
normal stored model: the same OCI artifacts ``ff build`` makes, listed by ``/api/tags`` and servable at
once. Uploaded blobs go into the store's blobs (verified against their digest before they get their
name); the build sees them under the names the client gave, as links in a folder of its own.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ffserve.builder import BuildJob, Instruction
from ffserve.errors import (
    BadRequest,
    InsufficientStorage,
    ModelNotFound,
    NotAvailable,
    ServeError,
    mapped_error,
)
from ffserve.models import canonical
from ffserve.routes.status import Emit, status_response
from ffserve.state import AppState, app_state
from ffserve.wire import parse_body
from ffserve.wire.ollama import CreateRequest, ParamScalar
from registry.artifact import ArtifactError, safe_filepath
from registry.choices import GGUF_QUANTS
from registry.reference import parse_reference
from registry.store import DigestMismatchError, NotFoundError, Store

_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_WRITE_CHUNK = 4 << 20  # uploads are written in pieces of this size, each in a worker thread
_DISK_MARGIN = 64 << 20  # an upload must leave this much disk free
ADAPTERS_DIR = "adapters"  # where a create's adapters are linked, beside its files


def blob_digest(text: str) -> str:
    """``sha256:<hex>`` (lower case) from a path's ``sha256:<hex>`` or ``sha256-<hex>``; else a 400."""
    m = _DIGEST.fullmatch(text)
    if m is None:
        raise BadRequest(f"invalid digest {text[:80]!r}: expected sha256:<64 hex digits>")
    return "sha256:" + m.group(1).lower()


async def blob_head(request: Request) -> Response:
    """200 when the blob is in the store, 404 when not."""
    e = app_state(request)
    digest = blob_digest(request.path_params["digest"])
    if not await asyncio.to_thread(e.store.has_blob, digest):
        raise ModelNotFound(f"blob {digest} not found")
    return Response(status_code=200)


async def _receive(request: Request, store: Store, digest: str) -> None:
    """Stream the body into a temp file in the store's ingest folder, then commit it under ``digest``
    (only if it hashes to it: a mismatch is a 400). The body's size is bounded by the Guard
    (``FF_MAX_UPLOAD_BYTES``) and by the free disk space."""
    length = request.headers.get("content-length", "")
    free = (await asyncio.to_thread(shutil.disk_usage, store.ingest)).free
    if length.isdigit() and int(length) > free - _DISK_MARGIN:
        raise InsufficientStorage(f"the blob is {length} bytes; the store has {free} bytes free")
    tmp = await asyncio.to_thread(store.temp_file, "upload")
    try:
        with open(tmp, "wb") as f:
            buf = bytearray()
            written = 0
            async for chunk in request.stream():
                buf += chunk
                if len(buf) >= _WRITE_CHUNK:
                    piece, buf = bytes(buf), bytearray()
                    await asyncio.to_thread(f.write, piece)
                    written += len(piece)
                    if written > free - _DISK_MARGIN:
                        raise InsufficientStorage(f"the blob does not fit: the store has {free} bytes free")
            await asyncio.to_thread(f.write, bytes(buf))
        await asyncio.to_thread(store.commit_file, tmp, digest)
    except DigestMismatchError as exc:
        raise BadRequest(f"digest mismatch: {exc}") from None
    except ClientDisconnect:
        raise BadRequest("the upload ended before its body did") from None
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)


async def blob_upload(request: Request) -> Response:
    """Store the body as blob ``:digest``: 201 when stored, 200 when it already was, 400 on a mismatch."""
    e = app_state(request)
    digest = blob_digest(request.path_params["digest"])
    if await asyncio.to_thread(e.store.has_blob, digest):
        return Response(status_code=200)
    await _receive(request, e.store, digest)
    return Response(status_code=201)


# --- /api/create ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sources:
    """What a create builds from: a stored model, or blobs linked under the names the client gave."""

    model: str | None
    files: dict[str, str]  # path in the build's folder → blob digest
    adapters: dict[str, str]


def _target(ref: str) -> str:
    if not ref:
        raise BadRequest("invalid request: model: a name for the new model is required")
    name = canonical(ref)
    parsed = parse_reference(name)
    if parsed.digest is not None or parsed.is_remote:
        raise BadRequest(
            f"{name}: create a model under a local name:tag (copy it to a registry name to push it)"
        )
    return name


def _quantize(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    key = value.strip().lower()
    if key not in GGUF_QUANTS:
        raise BadRequest(f"unknown quantization {value!r}; choose one of {', '.join(GGUF_QUANTS)}")
    return key


def _blobs(store: Store, named: Mapping[str, str], under: str, what: str) -> dict[str, str]:
    out = {}
    for name, digest_text in named.items():
        try:
            path = safe_filepath(name)
        except ArtifactError as exc:
            raise BadRequest(f"{what}: {exc}") from None
        digest = blob_digest(digest_text)
        if not store.has_blob(digest):
            raise BadRequest(
                f"{what}: blob {digest} ({name}) is not on the server; upload it first "
                f"(POST /api/blobs/{digest})"
            )
        out[f"{under}/{path}" if under else path] = digest
    return out


def _sources(e: AppState, body: CreateRequest) -> _Sources:
    """Check what the request builds from (blocking: it reads the store)."""
    adapters = _blobs(e.store, body.adapters or {}, ADAPTERS_DIR, "adapters")
    if body.from_:
        name = canonical(body.from_)
        try:
            e.store.resolve(name)
        except NotFoundError as exc:
            raise mapped_error(exc, f"model {name!r} not found") from None
        return _Sources(name, {}, adapters)
    if body.files:
        files = _blobs(e.store, body.files, "", "files")
        clash = sorted(p for p in files if p == ADAPTERS_DIR or p.startswith(ADAPTERS_DIR + "/"))
        if clash and adapters:
            raise BadRequest(f"files: {clash[0]!r} clashes with the folder the adapters are put in")
        return _Sources(None, files, adapters)
    if body.modelfile is not None:
        raise BadRequest("the modelfile field is gone from Ollama's API (0.5): send from or files")
    raise BadRequest("neither 'from' nor 'files' was specified")


def _param_text(value: ParamScalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def instructions(body: CreateRequest, sources: _Sources) -> tuple[Instruction, ...]:
    """The request as Modelfile instructions: FROM, ADAPTER, TEMPLATE, SYSTEM, PARAMETER, MESSAGE, LICENSE."""
    if sources.model is not None:
        source = sources.model
    else:
        source = next(iter(sources.files)) if len(sources.files) == 1 else "."
    out: list[Instruction] = [("FROM", (source,))]
    gguf = sorted(p for p in sources.adapters if p.lower().endswith(".gguf"))
    out += [("ADAPTER", (p,)) for p in gguf]
    if len(gguf) < len(sources.adapters):  # a PEFT folder (adapter_config.json + weights)
        out.append(("ADAPTER", (ADAPTERS_DIR,)))
    if body.template is not None:
        out.append(("TEMPLATE", (body.template,)))
    if body.system is not None:
        out.append(("SYSTEM", (body.system,)))
    for key, value in (body.parameters or {}).items():
        out += [("PARAMETER", (key, _param_text(v))) for v in (value if isinstance(value, list) else [value])]
    out += [("MESSAGE", (m.role, m.content or "")) for m in body.messages or []]
    licenses = [body.license] if isinstance(body.license, str) else body.license or []
    out += [("LICENSE", (text,)) for text in licenses]
    return tuple(out)


def _link(folder: Path, files: Mapping[str, str], store: Store) -> None:
    for path, digest in files.items():
        dst = folder / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(store.blob_path(digest), dst)


async def create(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, CreateRequest)
    builder = e.builder
    if builder is None:
        raise NotAvailable("this server has no model builder (ff serve has one: ffbuild's pipeline)")
    name, quantize = _target(body.ref), _quantize(body.quantize)
    sources = await asyncio.to_thread(_sources, e, body)
    steps = instructions(body, sources)
    loop = asyncio.get_running_loop()

    def job(emit: Emit) -> None:
        with tempfile.TemporaryDirectory(prefix="ff-create-") as tmp:
            # named after the model: a Hugging Face folder's name becomes its GGUF's general.name (and
            # part of the convert stage's cache key), so a random one would defeat the cache
            context = Path(tmp) / parse_reference(name).repository.rsplit("/", 1)[-1]
            context.mkdir()
            _link(context, {**sources.files, **sources.adapters}, e.store)
            emit({"status": f"building {name}"})
            build = BuildJob(name, steps, context, quantize, e.store)
            builder(build, lambda line: emit({"status": line}))
        loop.call_soon_threadsafe(e.scheduler.forget, name)  # before the answer: the next chat sees it

    def failure(exc: BaseException) -> ServeError:
        return mapped_error(exc, f"create {name} failed: {exc}")

    return await status_response(body.stream, job, failure)


ROUTES = [
    Route("/api/blobs/{digest}", blob_head, methods=["HEAD"]),
    Route("/api/blobs/{digest}", blob_upload, methods=["POST"]),
    Route("/api/create", create, methods=["POST"]),
]
