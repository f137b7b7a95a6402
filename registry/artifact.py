"""Writing and reading FerrousForge model artifacts in the store (docs/artifact-format.md).

A *variant* is one OCI image manifest (ModelPack ``artifactType``) whose layers are single files; a
*model* tag points at an OCI image index grouping the variants, and each variant is also tagged on
its own as ``<tag>-<variant>``. The compiler writes through :func:`write_variant`, :func:`write_index`
and :func:`tag_model`; the registry client and the server read through :func:`variants_of` and
:func:`open_variant`.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from registry.modelpack import ModelPackConfig
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
    FF_ANNOTATION_PREFIX,
    FF_MESSAGES,
    FF_MODELFILE,
    FF_PARAMS,
    FF_SYSTEM,
    FF_TEMPLATE,
    FF_VERIFY,
    MAX_MANIFEST_BYTES,
    MODEL_ARTIFACT_TYPE,
    MODEL_CONFIG,
    MODEL_DOC,
    MODEL_WEIGHT,
    MODEL_WEIGHT_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    ROLE_PROJECTOR,
    Descriptor,
    Index,
    Manifest,
    Platform,
)
from registry.reference import Reference, parse_reference
from registry.store import NotFoundError, Store, StoreError

SMALL_LAYER_LIMIT = 16 * 1024 * 1024
"""Text/JSON layers (template, params, …) larger than this are refused when read."""


class ArtifactError(StoreError):
    """An artifact in the store (or from a registry) is malformed or unsafe."""


def safe_filepath(path: str) -> str:
    """Validate a layer's ``org.cncf.model.filepath``: relative, forward slashes, no ``..``, no tricks."""
    if not path or "\x00" in path or "\\" in path:
        raise ArtifactError(f"unsafe layer path {path!r}")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise ArtifactError(f"layer path {path!r} is absolute")
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") or any(part in ("..", ".", "") for part in path.split("/")):
        raise ArtifactError(f"layer path {path!r} escapes its folder or is not normalised")
    return path


def layer(
    store: Store, media_type: str, filepath: str, *, file: Path | None = None, data: bytes | None = None
) -> Descriptor:
    """Add one file (from disk or bytes) to the store as a layer descriptor."""
    safe_filepath(filepath)
    if (file is None) == (data is None):
        raise ValueError("give exactly one of file= or data=")
    digest, size = store.add_file(file) if file is not None else store.add_bytes(data or b"")
    title = filepath.rsplit("/", 1)[-1]
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        annotations={ANNOTATION_FILEPATH: filepath, ANNOTATION_TITLE: title},
    )


def write_variant(
    store: Store,
    config: ModelPackConfig,
    layers: list[Descriptor],
    annotations: dict[str, str],
    platform: Platform | None = None,
) -> Descriptor:
    """Store one variant manifest; return its descriptor carrying the annotations for the index."""
    for key in annotations:
        if not key.startswith(FF_ANNOTATION_PREFIX) and not key.startswith("org."):
            raise ArtifactError(f"annotation {key!r} is outside io.ferrousforge.* / org.*")
    config_desc = store.add_json(config.wire(), MODEL_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": MODEL_ARTIFACT_TYPE,
        "config": config_desc.wire(),
        "layers": [d.wire() for d in layers],
        "annotations": dict(sorted(annotations.items())),
    }
    desc = store.add_json(manifest, OCI_MANIFEST)
    return Descriptor(
        media_type=OCI_MANIFEST,
        digest=desc.digest,
        size=desc.size,
        artifact_type=MODEL_ARTIFACT_TYPE,
        annotations=dict(sorted(annotations.items())),
        platform=platform,
    )


def write_index(
    store: Store, variants: list[Descriptor], annotations: dict[str, str] | None = None
) -> Descriptor:
    """Store the image index grouping ``variants`` (sorted by variant name for reproducibility)."""
    entries = sorted(variants, key=lambda d: (d.annotations or {}).get(ANN_VARIANT, d.digest))
    body: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": MODEL_ARTIFACT_TYPE,
        "manifests": [d.wire() for d in entries],
    }
    if annotations:
        body["annotations"] = dict(sorted(annotations.items()))
    desc = store.add_json(body, OCI_INDEX)
    return Descriptor(
        media_type=OCI_INDEX, digest=desc.digest, size=desc.size, artifact_type=MODEL_ARTIFACT_TYPE
    )


def variant_tag(tag: str, variant: str) -> str:
    """The tag a variant is also known by: ``<tag>-<variant>`` (OCI tags allow ``[A-Za-z0-9_.-]``)."""
    name = f"{tag}-{variant}"
    if len(name) > 128:
        raise ArtifactError(
            f"variant tag {name[:40]}… is {len(name)} characters; OCI tags hold 128: use a shorter tag"
        )
    return name


def tag_model(store: Store, ref: str | Reference, index: Descriptor) -> list[str]:
    """Tag the index as ``ref`` and each variant as ``ref``'s tag plus ``-<variant>``; return the names."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    if r.tag is None:
        raise ArtifactError(f"{r}: a model needs a tag")
    names = []
    for v in Index.model_validate(store.read_json(index.digest)).manifests:
        vname = (v.annotations or {}).get(ANN_VARIANT)
        if vname:
            vref = r.with_tag(variant_tag(r.tag, vname))
            store.tag(vref, v)
            names.append(str(vref))
    store.tag(r, index)
    return [str(r), *names]


def remove_model(store: Store, ref: str | Reference) -> list[str]:
    """Untag ``ref`` and the variant tags under it; return the names removed (none: it was not there).
    Blobs stay until ``Store.prune``. Used by ``ff rm`` and the server's ``/api/delete``."""
    r = parse_reference(ref) if isinstance(ref, str) else ref
    variants = variants_of(store, r)  # raises NotFoundError for an unknown model
    removed = [str(r)] if store.untag(r) else []
    if r.tag is not None:
        for v in variants:
            if ANN_VARIANT in v.annotations:
                vref = r.with_tag(variant_tag(r.tag, v.name))
                if store.untag(vref):
                    removed.append(str(vref))
    return removed


# --- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantRef:
    """A variant as listed by an index entry (or a lone manifest)."""

    descriptor: Descriptor

    @property
    def annotations(self) -> dict[str, str]:
        return self.descriptor.annotations or {}

    @property
    def name(self) -> str:
        return self.annotations.get(ANN_VARIANT, self.descriptor.digest[7:19])

    @property
    def target(self) -> str:
        return self.annotations.get(ANN_TARGET, "cpu")

    @property
    def device(self) -> str:
        return self.target.split(":", 1)[0]

    @property
    def backend(self) -> str:
        return self.annotations.get(ANN_BACKEND, "llamacpp")

    @property
    def quantization(self) -> str:
        return self.annotations.get(ANN_QUANTIZATION, "")

    @property
    def format(self) -> str:
        return self.annotations.get(ANN_FORMAT, "gguf")

    @property
    def task(self) -> str:
        return self.annotations.get(ANN_TASK, "")


def present_variants(store: Store, variants: list[VariantRef]) -> list[VariantRef]:
    """The variants whose manifest this store holds (a pull fetches only the one it chose), or all of
    them when it holds none: what serving and ``ff run`` choose among."""
    present = [v for v in variants if store.has_blob(v.descriptor.digest)]
    return present or variants


def parse_manifest(data: bytes) -> Manifest | Index:
    """Parse untrusted manifest/index bytes into the right model, or raise :class:`ArtifactError`."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"manifest is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"manifest is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ArtifactError("manifest is not a JSON object")
    try:
        if "manifests" in obj:
            return Index.model_validate(obj)
        return Manifest.model_validate(obj)
    except ValueError as exc:
        raise ArtifactError(f"malformed manifest: {exc}") from None


def variants_of(store: Store, ref: str | Reference) -> list[VariantRef]:
    """The variants a reference names: every entry of its index, or the one manifest it points at."""
    desc = store.resolve(ref)
    doc = parse_manifest(store.read_blob(desc.digest, max_size=MAX_MANIFEST_BYTES))
    if isinstance(doc, Index):
        return [VariantRef(d) for d in doc.manifests]
    return [VariantRef(desc.model_copy(update={"annotations": doc.annotations or desc.annotations}))]


@dataclass
class ModelFiles:
    """Everything a runtime needs from one variant, with blob paths inside the store."""

    digest: str
    manifest: Manifest
    config: ModelPackConfig
    files: dict[str, Path]  # layer filepath → blob path
    weights: list[Path]
    weight_configs: list[Path]
    adapters: list[Path]
    projector: Path | None = None  # a multimodal model's projector GGUF (the weight layer of role projector)
    template: str | None = None
    system: str | None = None
    params: dict[str, object] = field(default_factory=dict)
    messages: list[dict[str, str]] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    modelfile: str | None = None
    verify: dict[str, object] = field(default_factory=dict)

    @property
    def annotations(self) -> dict[str, str]:
        return self.manifest.annotations or {}

    @property
    def size(self) -> int:
        return sum(d.size for d in self.manifest.layers)


def _text(store: Store, d: Descriptor) -> str:
    return store.read_blob(d.digest, max_size=SMALL_LAYER_LIMIT).decode("utf-8")


def open_variant(store: Store, digest: str) -> ModelFiles:
    """Read a variant manifest and its small layers; weights stay as paths to their blobs."""
    doc = parse_manifest(store.read_blob(digest, max_size=MAX_MANIFEST_BYTES))
    if not isinstance(doc, Manifest):
        raise ArtifactError(f"{digest} is an index, not a variant manifest")
    try:
        config = ModelPackConfig.model_validate(store.read_json(doc.config.digest))
    except ValueError as exc:
        raise ArtifactError(f"variant {digest}: bad ModelPack config: {exc}") from None
    out = ModelFiles(
        digest=digest, manifest=doc, config=config, files={}, weights=[], weight_configs=[], adapters=[]
    )
    for d in doc.layers:
        filepath = safe_filepath((d.annotations or {}).get(ANNOTATION_FILEPATH, ""))
        path = store.blob_path(d.digest)
        if not path.is_file():
            raise NotFoundError(f"variant {digest}: layer {filepath} ({d.digest}) is missing from the store")
        out.files[filepath] = path
        mt = d.media_type
        if mt == MODEL_WEIGHT and (d.annotations or {}).get(ANN_WEIGHT_ROLE) == ROLE_PROJECTOR:
            out.projector = path
        elif mt == MODEL_WEIGHT:
            out.weights.append(path)
        elif mt == MODEL_WEIGHT_CONFIG:
            out.weight_configs.append(path)
        elif mt == FF_ADAPTER:
            out.adapters.append(path)
        elif mt == FF_TEMPLATE:
            out.template = _text(store, d)
        elif mt == FF_SYSTEM:
            out.system = _text(store, d)
        elif mt == FF_PARAMS:
            out.params = dict(json.loads(_text(store, d)))
        elif mt == FF_MESSAGES:
            out.messages = list(json.loads(_text(store, d)))
        elif mt == MODEL_DOC and filepath.upper().startswith("LICENSE"):
            out.licenses.append(_text(store, d))
        elif mt == FF_MODELFILE:
            out.modelfile = _text(store, d)
        elif mt == FF_VERIFY:
            out.verify = dict(json.loads(_text(store, d)))
    if not out.weights:
        raise ArtifactError(f"variant {digest} has no weight layer")
    return out
