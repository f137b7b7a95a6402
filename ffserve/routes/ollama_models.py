"""Ollama's model-management routes: tags, show, ps, pull, push, delete, copy, version, and ``/``."""

from __future__ import annotations

import asyncio
import dataclasses

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ffserve import __version__
from ffserve.encoding import JSONResponse
from ffserve.errors import Blame, ModelNotFound, ServeError, mapped_error
from ffserve.models import canonical, remote_module
from ffserve.routes.status import Emit, status_response
from ffserve.state import AppState, app_state
from ffserve.wire import parse_body
from ffserve.wire.ollama import CopyRequest, NameRequest, rfc3339
from registry.artifact import (
    ArtifactError,
    ModelFiles,
    VariantRef,
    open_variant,
    remove_model,
    tag_model,
    variants_of,
)
from registry.oci import OCI_INDEX
from registry.select import SelectionError, select_stored
from registry.store import NotFoundError, StoreError


def _pick(e: AppState, name: str) -> tuple[VariantRef, ModelFiles | None]:
    """The variant ``name`` serves here: :func:`registry.select.select_stored` with the server's
    preferences, as for a request (:class:`SelectionError` when there is none)."""
    s = e.settings
    v = select_stored(e.store, name, target=s.target, quantize=s.quantize, backend=s.backend)
    try:
        return v, open_variant(e.store, v.descriptor.digest)
    except (StoreError, ArtifactError):
        return v, None


def _details(v: VariantRef | None, files: ModelFiles | None) -> dict[str, object]:
    cfg = files.config.config if files else None
    family = (cfg.architecture if cfg else None) or ""
    quantization = (v.quantization if v else "") or (cfg.quantization if cfg else "") or ""
    return {
        "parent_model": "",
        "format": v.format if v else "",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": (cfg.param_size if cfg else None) or "",
        "quantization_level": quantization.upper(),
    }


def _has_chat_template(v: VariantRef, files: ModelFiles) -> bool:
    """Whether the runtime will chat with this variant, by its rule: a Modelfile TEMPLATE, or the model's
    own chat template (a GGUF's ``tokenizer.chat_template``; a GenAI LLM built for chat)."""
    if files.template:
        return True
    if v.format != "gguf":
        return v.task == "chat"
    from registry.gguf_info import GGUFFormatError, read_gguf_header  # GGUF models only (the gguf extra)

    try:
        return bool(read_gguf_header(files.weights[0]).kv.get("tokenizer.chat_template"))
    except (GGUFFormatError, IndexError):
        return False


def _capabilities(v: VariantRef, files: ModelFiles | None) -> list[str]:
    if v.task == "embed":
        return ["embedding"]
    if v.task in ("tensor", "classify", "transcribe"):
        return []  # no Ollama capability: these answer /v2 (and speech models /v1/audio) only
    caps = ["completion"]
    if files is not None and _has_chat_template(v, files):
        caps.append("chat")
    if v.format == "gguf":
        caps.append("embedding")  # llama.cpp embeds with any GGUF text model
    declared = files.config.config.capabilities if files is not None else None
    if files is not None and files.projector is not None and declared is not None:
        inputs = declared.input_types or []  # the variant's ModelPack capabilities.inputTypes
        caps += [cap for kind, cap in (("image", "vision"), ("audio", "audio")) if kind in inputs]
    return caps


def _model_entry(e: AppState, name: str, digest: str) -> dict[str, object]:
    v: VariantRef | None
    try:
        v, files = _pick(e, name)
    except SelectionError:  # no variant of it is served here: listed all the same, without details
        v, files = None, None
    return {
        "name": name,
        "model": name,
        "modified_at": rfc3339(e.store.blob_path(digest).stat().st_mtime),
        "size": files.size if files else v.descriptor.size if v else 0,
        "digest": digest.removeprefix("sha256:"),
        "details": _details(v, files),
    }


async def tags(request: Request) -> Response:
    e = app_state(request)

    def listing() -> list[dict[str, object]]:
        out = []
        for name, desc in e.store.tags():
            try:
                out.append(_model_entry(e, name, desc.digest))
            except (StoreError, ArtifactError):
                continue  # a broken or foreign tag is left out of the listing, not fatal
        return out

    return JSONResponse({"models": await asyncio.to_thread(listing)})


def _parameters(params: dict[str, object]) -> str:
    lines = []
    for key, value in sorted(params.items()):
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"{key:<30} {item!s}" if not isinstance(item, str) else f'{key:<30} "{item}"')
    return "\n".join(lines)


async def show(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, NameRequest)
    name = canonical(body.ref or "")

    def info() -> dict[str, object]:
        try:
            desc = e.store.resolve(name)
            v, files = _pick(e, name)
        except NotFoundError as exc:
            raise mapped_error(exc, f"model {name!r} not found") from None
        except SelectionError as exc:
            raise mapped_error(exc, f"{name}: {exc}") from None
        if files is None:
            raise ServeError(f"{name}: variant {v.name} is not in the store (pull it)")
        cfg = files.config
        model_info: dict[str, object] = {
            "general.architecture": cfg.config.architecture or "",
            "general.parameter_count": cfg.config.param_size or "",
            "general.name": cfg.descriptor.name or name,
        }
        return {
            "modelfile": files.modelfile or f"FROM {name}\n",
            "parameters": _parameters(files.params),
            "template": files.template or "",
            "system": files.system or "",
            "license": "\n".join(files.licenses),
            "details": _details(v, files),
            "model_info": model_info,
            "capabilities": _capabilities(v, files),
            "modified_at": rfc3339(e.store.blob_path(desc.digest).stat().st_mtime),
            "variant": v.name,
            "variants": [x.name for x in variants_of(e.store, name)],
        }

    return JSONResponse(await asyncio.to_thread(info))


async def ps(request: Request) -> Response:
    e = app_state(request)
    out = []
    for m in e.scheduler.loaded():
        v, files = m.resolved.variant, m.resolved.files
        exp = m.expires_wall()
        out.append(
            {
                "name": m.name,
                "model": m.name,
                "size": m.runtime.memory_bytes,
                "digest": m.key.removeprefix("sha256:"),
                "details": _details(v, files),
                "expires_at": rfc3339(exp) if exp is not None else "9999-12-31T23:59:59Z",
                "size_vram": 0,
                "context_length": m.runtime.context_length,
                "num_parallel": m.runtime.parallel,  # sequences run at once (FF_NUM_PARALLEL, else chosen)
                "active_requests": m.active,
            }
        )
    return JSONResponse({"models": out})


async def _transfer(request: Request, push: bool) -> Response:
    e = app_state(request)
    body = await parse_body(request, NameRequest)
    name = canonical(body.ref or "")
    remote = remote_module()

    def job(emit: Emit) -> None:
        def progress(event: object) -> None:
            fields = dataclasses.asdict(event) if dataclasses.is_dataclass(event) else {"status": str(event)}  # type: ignore[arg-type]
            status = str(fields.get("status", ""))
            if status == "success":
                return  # said once, at the end, by the stream
            msg: dict[str, object] = {"status": status}
            if fields.get("digest"):
                msg.update(
                    digest=fields["digest"],
                    total=fields.get("total", 0),
                    completed=fields.get("completed", 0),
                )
            emit(msg)

        insecure = body.insecure or e.settings.registry_insecure
        if push:
            remote.push(name, store=e.store, insecure=insecure, progress=progress)
        else:
            s = e.settings
            remote.pull(
                name,
                store=e.store,
                target=s.target,
                quantize=s.quantize,
                backend=s.backend,
                insecure=insecure,
                progress=progress,
            )
            e.scheduler.forget(name)

    def failure(exc: BaseException) -> ServeError:
        return mapped_error(exc, f"{'push' if push else 'pull'} {name} failed: {exc}", Blame.REGISTRY)

    return await status_response(body.stream, job, failure)


async def pull(request: Request) -> Response:
    return await _transfer(request, push=False)


async def push(request: Request) -> Response:
    return await _transfer(request, push=True)


async def delete(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, NameRequest)
    name = canonical(body.ref or "")

    missing = f"model {name!r} not found"

    def remove() -> None:
        try:
            removed = remove_model(e.store, name)
        except NotFoundError as exc:
            raise mapped_error(exc, missing) from None
        if not removed:
            raise ModelNotFound(missing)

    await e.scheduler.unload(name)
    await asyncio.to_thread(remove)
    e.scheduler.forget(name)
    return Response(status_code=200)


async def copy(request: Request) -> Response:
    e = app_state(request)
    body = await parse_body(request, CopyRequest)
    src, dst = canonical(body.source), canonical(body.destination)

    def do_copy() -> None:
        try:
            desc = e.store.resolve(src)
        except NotFoundError as exc:
            raise mapped_error(exc, f"model {src!r} not found") from None
        try:
            if desc.media_type == OCI_INDEX:
                tag_model(e.store, dst, desc)
            else:
                e.store.tag(dst, desc)
        except (StoreError, ValueError) as exc:
            raise mapped_error(exc, f"cannot copy {src} to {dst}: {exc}", Blame.CLIENT) from None

    await asyncio.to_thread(do_copy)
    e.scheduler.forget(dst)
    return Response(status_code=200)


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


async def root(request: Request) -> Response:
    return PlainTextResponse("FerrousForge is running (Ollama-compatible API)")


ROUTES = [
    Route("/", root, methods=["GET", "HEAD"]),
    Route("/api/version", version, methods=["GET"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/pull", pull, methods=["POST"]),
    Route("/api/push", push, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/copy", copy, methods=["POST"]),
]
