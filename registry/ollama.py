"""Ollama-format models from an OCI registry, stored as ff models that can be served.

An Ollama manifest is a Docker v2 image manifest whose layers have ``application/vnd.ollama.image.*``
media types (model, projector, template, system, params, messages, license, adapter); a projector
becomes a weight layer ``mmproj.gguf`` with ``io.ferrousforge.weight.role: projector``, as ``ff build``
writes it. After its blobs are
pulled and verified, this module writes a ModelPack variant manifest that reuses the same blobs with
ff layer media types, an index holding that one variant, and tags them. Architecture and parameter
count come from the GGUF header (the ``gguf`` package) when it can be read, else from Ollama's
config, else they are left out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from registry.artifact import ArtifactError, tag_model, write_index, write_variant
from registry.modelpack import (
    ModelCapabilities,
    ModelConfig,
    ModelDescriptor,
    ModelFS,
    ModelPackConfig,
    param_size,
)
from registry.oci import (
    ANN_BACKEND,
    ANN_FORMAT,
    ANN_QUANTIZATION,
    ANN_TARGET,
    ANN_TASK,
    ANN_VARIANT,
    ANN_WEIGHT_ROLE,
    ANNOTATION_FILEPATH,
    ANNOTATION_TITLE,
    FF_ADAPTER,
    FF_MESSAGES,
    FF_PARAMS,
    FF_SYSTEM,
    FF_TEMPLATE,
    MAX_MANIFEST_BYTES,
    MODEL_DOC,
    MODEL_WEIGHT,
    OLLAMA_ADAPTER,
    OLLAMA_LICENSE,
    OLLAMA_MESSAGES,
    OLLAMA_MODEL,
    OLLAMA_PARAMS,
    OLLAMA_PROJECTOR,
    OLLAMA_SYSTEM,
    OLLAMA_TEMPLATE,
    PROJECTOR_FILEPATH,
    ROLE_PROJECTOR,
    Descriptor,
    Manifest,
)
from registry.reference import Reference
from registry.store import Store

OLLAMA_PREFIX = "application/vnd.ollama.image."
ANN_SOURCE_FORMAT = "io.ferrousforge.source-format"
log = logging.getLogger(__name__)


def is_ollama_manifest(m: Manifest) -> bool:
    return any(d.media_type.startswith(OLLAMA_PREFIX) for d in m.layers)


def _gguf_facts(path: str) -> tuple[str | None, str | None]:
    """(architecture, paramSize) from a GGUF header, or Nones when gguf is missing or the file is odd."""
    try:
        from registry.gguf_info import read_gguf_info
    except ImportError:  # the gguf package (extra ``gguf``) is not installed
        return None, None
    try:
        info = read_gguf_info(Path(path))
    except Exception as exc:  # a malformed header must not stop the pull; the fields are optional
        log.warning("cannot read the GGUF header of %s: %s", path, exc)
        return None, None
    return info.architecture, (param_size(info.param_count) if info.param_count else None)


def _json_obj(store: Store, digest: str) -> dict[str, object]:
    try:
        obj = json.loads(store.read_blob(digest, max_size=MAX_MANIFEST_BYTES))
    except (ValueError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _layer(d: Descriptor, media_type: str, filepath: str) -> Descriptor:
    return Descriptor(
        media_type=media_type,
        digest=d.digest,
        size=d.size,
        annotations={ANNOTATION_FILEPATH: filepath, ANNOTATION_TITLE: filepath.rsplit("/", 1)[-1]},
    )


def ff_layers(m: Manifest) -> list[Descriptor]:
    """The Ollama layers as ff layers (same blobs, ff media types and file paths)."""
    out: list[Descriptor] = []
    weights = licenses = adapters = 0
    simple = {
        OLLAMA_TEMPLATE: (FF_TEMPLATE, "template.txt"),
        OLLAMA_SYSTEM: (FF_SYSTEM, "system.txt"),
        OLLAMA_PARAMS: (FF_PARAMS, "params.json"),
        OLLAMA_MESSAGES: (FF_MESSAGES, "messages.json"),
    }
    seen: set[str] = set()
    for d in m.layers:
        mt = d.media_type
        if mt == OLLAMA_MODEL:
            weights += 1
            out.append(_layer(d, MODEL_WEIGHT, "model.gguf" if weights == 1 else f"model-{weights}.gguf"))
        elif mt == OLLAMA_PROJECTOR:
            if any(x.annotations and x.annotations.get(ANN_WEIGHT_ROLE) for x in out):
                raise ArtifactError("Ollama manifest has two projector layers")
            proj = _layer(d, MODEL_WEIGHT, PROJECTOR_FILEPATH)
            role = {**(proj.annotations or {}), ANN_WEIGHT_ROLE: ROLE_PROJECTOR}
            out.append(proj.model_copy(update={"annotations": role}))
        elif mt == OLLAMA_ADAPTER:
            adapters += 1
            out.append(_layer(d, FF_ADAPTER, f"adapters/{adapters}.gguf"))
        elif mt == OLLAMA_LICENSE:
            licenses += 1
            out.append(_layer(d, MODEL_DOC, "LICENSE" if licenses == 1 else f"LICENSE-{licenses}"))
        elif mt in simple:
            ff_type, path = simple[mt]
            if path in seen:
                raise ArtifactError(f"Ollama manifest has two {mt} layers")
            seen.add(path)
            out.append(_layer(d, ff_type, path))
        else:
            raise ArtifactError(
                f"Ollama layer type {mt} is not supported by ff (supported: model, projector, adapter, "
                "template, system, params, messages, license)"
            )
    if weights == 0:
        raise ArtifactError("Ollama manifest has no model layer")
    return out


def _capabilities(store: Store, layers: list[Descriptor]) -> ModelCapabilities | None:
    """Text in, text out, plus what the projector layer (if any) encodes (image, audio)."""
    proj = next((d for d in layers if (d.annotations or {}).get(ANN_WEIGHT_ROLE) == ROLE_PROJECTOR), None)
    if proj is None:
        return None
    try:
        from registry.gguf_info import projector_media

        media = projector_media(store.blob_path(proj.digest))
    except Exception as exc:  # a malformed header must not stop the pull; the field is optional
        log.warning("cannot read the projector GGUF header %s: %s", proj.digest, exc)
        media = ()
    inputs = ["text", *media]
    return ModelCapabilities.model_validate({"inputTypes": inputs, "outputTypes": ["text"]})


def store_ollama_model(store: Store, m: Manifest, names: list[Reference]) -> tuple[Descriptor, str]:
    """Write the ff variant + index for a pulled Ollama manifest (blobs already in the store); tag it."""
    layers = ff_layers(m)
    cfg = _json_obj(store, m.config.digest)
    weight = next(
        d for d in layers if d.media_type == MODEL_WEIGHT and ANN_WEIGHT_ROLE not in (d.annotations or {})
    )
    arch, size = _gguf_facts(str(store.blob_path(weight.digest)))
    if arch is None and isinstance(cfg.get("model_family"), str):
        arch = str(cfg["model_family"])
    if size is None and isinstance(cfg.get("model_type"), str):
        size = str(cfg["model_type"])
    quant = str(cfg["file_type"]).lower() if isinstance(cfg.get("file_type"), str) else None
    caps = _capabilities(store, layers)
    try:
        config = ModelConfig(
            architecture=arch, format="gguf", param_size=size, quantization=quant, capabilities=caps
        )
    except ValueError:
        config = ModelConfig(architecture=arch, format="gguf", quantization=quant, capabilities=caps)
    pack = ModelPackConfig(
        descriptor=ModelDescriptor(name=names[0].repository.rsplit("/", 1)[-1]),
        config=config,
        modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
    )
    vname = f"{quant or 'gguf'}-cpu"
    has_template = any(d.media_type == FF_TEMPLATE for d in layers)
    ann = {
        ANN_VARIANT: vname,
        ANN_TARGET: "cpu",
        ANN_BACKEND: "llamacpp",
        ANN_FORMAT: "gguf",
        ANN_TASK: "chat" if has_template else "generate",
        ANN_SOURCE_FORMAT: "ollama",
    }
    if quant:
        ann[ANN_QUANTIZATION] = quant
    variant = write_variant(store, pack, layers, ann)
    index = write_index(store, [variant])
    for n in names:
        tag_model(store, n, index)
    return index, vname
