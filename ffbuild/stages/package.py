"""The package stage: verified variants → ModelPack manifests, one OCI index, tags (:func:`run`).

Layout and annotations follow docs/artifact-format.md. Everything written is content-addressed and
canonical (sorted keys, no timestamps), so the same inputs give the same digests; blobs get their final
name only after their digest is checked, and tags are written last, so an interrupted build leaves the
store without a partial model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from ffbuild.cache import hashed_stat
from ffbuild.plan import Message, Variant
from ffbuild.stages import tools
from ffbuild.stages.context import BuildContext, ExtraLayer, JSONValue, WeightFile
from ffbuild.stages.errors import StageError
from registry.artifact import layer, tag_model, variant_tag, variants_of, write_index, write_variant
from registry.gguf_info import projector_media
from registry.modelpack import (
    Modality,
    ModelCapabilities,
    ModelConfig,
    ModelDescriptor,
    ModelFS,
    ModelPackConfig,
    param_size,
)
from registry.oci import (
    ANN_AGREEMENT,
    ANN_BACKEND,
    ANN_COSINE,
    ANN_FORMAT,
    ANN_MIN_MEMORY,
    ANN_PPL_RATIO,
    ANN_PRECISION,
    ANN_QUANTIZATION,
    ANN_RUNTIME,
    ANN_TARGET,
    ANN_TASK,
    ANN_VARIANT,
    ANN_WEIGHT_ROLE,
    ANN_WER,
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
    MODEL_DOC,
    MODEL_WEIGHT,
    PROJECTOR_FILEPATH,
    ROLE_PROJECTOR,
    Descriptor,
    canonical_json,
)
from registry.reference import Reference
from registry.store import DigestMismatchError, Store, StoreError

CAPABILITIES: dict[str, tuple[list[Modality], list[Modality]]] = {
    "chat": (["text"], ["text"]),
    "generate": (["text"], ["text"]),
    "embed": (["text"], ["embedding"]),
    "classify": (["text"], ["other"]),
    "tensor": (["other"], ["other"]),
    "transcribe": (["audio"], ["text"]),
}
"""ModelPack input/output types for each TASK."""


class PackageError(StageError):
    """A variant cannot be packaged (a blob that does not match its digest, a bad config value)."""


@dataclass(frozen=True)
class VariantPayload:
    """Everything one variant's manifest is made from."""

    variant: Variant  # quantization resolved (never "source")
    weight: WeightFile
    architecture: str | None
    param_count: int | None
    precision: str | None
    adapters: tuple[WeightFile, ...] = ()
    verify: Mapping[str, JSONValue] | None = None  # the verify report, None when verify was skipped
    runtime: str | None = None  # the runtime version verify ran with
    format: str = "gguf"  # io.ferrousforge.format and the ModelPack config's format
    weight_name: str = "model.gguf"  # the weight layer's filepath
    extra: tuple[ExtraLayer, ...] = ()  # layers after the weight (tensor variants)
    annotations: Mapping[str, str] | None = None  # backend facts (e.g. the TensorRT version)
    projector: WeightFile | None = None  # a multimodal model's projector GGUF (mmproj.gguf)
    media: tuple[Modality, ...] = ()  # what the projector takes besides text (image, audio)


@dataclass(frozen=True)
class ModelMeta:
    """What every variant of a model shares (from the plan, or inherited from a store source)."""

    name: str
    task: str
    template: str | None = None
    system: str | None = None
    parameters: Mapping[str, object] | None = None  # typed PARAMETER values (ParamValue)
    messages: Sequence[Message] = ()
    licenses: Sequence[str] = ()
    labels: Mapping[str, str] | None = None
    modelfile: str = ""


def add_blob(store: Store, f: WeightFile) -> None:
    """Put a large file in the store under its digest, verified: hard-linked when the build owns it
    (and the file system allows), else copied (a user's own file may be edited in place later)."""
    try:
        hashed = hashed_stat(f.path, f.digest) if f.build_owned else None
        store.add_file(
            f.path, link=f.build_owned, expected_digest=f.digest, expected_size=f.size, hashed_as=hashed
        )
    except DigestMismatchError as exc:
        raise PackageError(
            f"{f.path} does not match the digest recorded when it was made ({exc}); "
            "the build cache is damaged: delete $FF_HOME/cache and build again"
        ) from None


def _file_layer(store: Store, media_type: str, filepath: str, f: WeightFile) -> Descriptor:
    add_blob(store, f)
    return Descriptor(
        media_type=media_type,
        digest=f.digest,
        size=f.size,
        annotations={ANNOTATION_FILEPATH: filepath, ANNOTATION_TITLE: filepath.rsplit("/", 1)[-1]},
    )


def label_annotations(labels: Mapping[str, str]) -> dict[str, str]:
    """LABELs: ``org.opencontainers.*`` keys as they are, all others under ``io.ferrousforge.label.``."""
    out: dict[str, str] = {}
    for key, value in labels.items():
        if key.startswith("org.opencontainers."):
            out[key] = value
        else:
            out[f"{FF_ANNOTATION_PREFIX}label.{key}"] = value
    return out


def _figure(value: JSONValue) -> str | None:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else None


def variant_layers(store: Store, meta: ModelMeta, p: VariantPayload) -> list[Descriptor]:
    """The layers of one variant, in the fixed order of docs/artifact-format.md."""
    layers = [_file_layer(store, MODEL_WEIGHT, p.weight_name, p.weight)]
    if p.projector is not None:
        proj = _file_layer(store, MODEL_WEIGHT, PROJECTOR_FILEPATH, p.projector)
        role = {**(proj.annotations or {}), ANN_WEIGHT_ROLE: ROLE_PROJECTOR}
        layers.append(proj.model_copy(update={"annotations": role}))
    layers += [_file_layer(store, x.media_type, x.filepath, x.file) for x in p.extra]
    layers += [_file_layer(store, FF_ADAPTER, f"adapters/{i}.gguf", a) for i, a in enumerate(p.adapters)]
    for i, text in enumerate(meta.licenses):
        layers.append(
            layer(store, MODEL_DOC, "LICENSE" if i == 0 else f"LICENSE-{i + 1}", data=text.encode())
        )
    if meta.template is not None:
        layers.append(layer(store, FF_TEMPLATE, "template.txt", data=meta.template.encode()))
    if meta.system is not None:
        layers.append(layer(store, FF_SYSTEM, "system.txt", data=meta.system.encode()))
    if meta.parameters:
        layers.append(layer(store, FF_PARAMS, "params.json", data=canonical_json(dict(meta.parameters))))
    if meta.messages:
        msgs = [{"role": m.role, "content": m.content} for m in meta.messages]
        layers.append(layer(store, FF_MESSAGES, "messages.json", data=canonical_json(msgs)))
    if meta.modelfile:
        layers.append(layer(store, FF_MODELFILE, "Modelfile", data=meta.modelfile.encode()))
    if p.verify is not None:
        report = layer(store, FF_VERIFY, "verify.json", data=canonical_json(dict(p.verify)))
        store.mark_measured(report.digest)  # ours (a pulled report never passes here): may be carried over
        layers.append(report)
    return layers


def variant_config(meta: ModelMeta, p: VariantPayload, layers: list[Descriptor]) -> ModelPackConfig:
    inputs, outputs = CAPABILITIES.get(meta.task, (["text"], ["text"]))
    inputs = [*inputs, *(m for m in p.media if m not in inputs)]
    try:
        return ModelPackConfig(
            descriptor=ModelDescriptor(name=meta.name, family=p.architecture),
            config=ModelConfig(
                architecture=p.architecture,
                format=p.format,
                param_size=param_size(p.param_count) if p.param_count else None,
                precision=p.precision,
                quantization=p.variant.quantization,
                capabilities=ModelCapabilities(input_types=inputs, output_types=outputs),
            ),
            modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
        )
    except ValueError as exc:
        raise PackageError(f"variant {p.variant.name}: cannot fill the ModelPack config: {exc}") from None


def variant_annotations(meta: ModelMeta, p: VariantPayload) -> dict[str, str]:
    v = p.variant
    ann = {
        ANN_VARIANT: v.name,
        ANN_TARGET: v.target,
        ANN_BACKEND: v.backend,
        ANN_FORMAT: p.format,
        ANN_QUANTIZATION: v.quantization,
        ANN_TASK: meta.task,
        ANN_MIN_MEMORY: str(
            p.weight.size
            + sum(x.file.size for x in p.extra)
            + sum(a.size for a in p.adapters)
            + (p.projector.size if p.projector else 0)
        ),
    }
    if p.precision:
        ann[ANN_PRECISION] = p.precision
    if p.runtime:
        ann[ANN_RUNTIME] = p.runtime
    if p.verify is not None:
        cosine = _figure(p.verify.get("cosine"))
        if cosine is not None:
            ann[ANN_COSINE] = cosine
        agreement = _figure(p.verify.get("agreement"))
        ratio = _figure(p.verify.get("perplexity_ratio"))
        if agreement is not None:
            ann[ANN_AGREEMENT] = agreement
        if ratio is not None:
            ann[ANN_PPL_RATIO] = ratio
        wer = _figure(p.verify.get("wer"))
        if wer is not None:
            ann[ANN_WER] = wer
    ann.update(p.annotations or {})
    ann.update(label_annotations(meta.labels or {}))
    return ann


def write_variant_manifest(store: Store, meta: ModelMeta, p: VariantPayload) -> Descriptor:
    """Store one variant's blobs, config and manifest; return the descriptor for the index."""
    layers = variant_layers(store, meta, p)
    return write_variant(store, variant_config(meta, p, layers), layers, variant_annotations(meta, p))


def package_model(
    store: Store, ref: Reference, meta: ModelMeta, payloads: Sequence[VariantPayload]
) -> tuple[Descriptor, list[Descriptor], list[str]]:
    """Write every variant and the index, then tag ``ref`` and its variant tags (last).

    Variant tags of an earlier build of ``ref`` that this build no longer has are removed.
    Returns the index descriptor, the variant descriptors and the tag names written.
    """
    if not payloads:
        raise PackageError("nothing to package: the build produced no variants")
    names = [p.variant.name for p in payloads]
    if len(set(names)) != len(names):
        raise PackageError(f"two variants share a name: {', '.join(sorted(names))}")
    with store.writing():  # prune waits: the new blobs are unreachable until the tags are written
        store.clean_ingest()
        variants = [write_variant_manifest(store, meta, p) for p in payloads]
        index = write_index(store, variants)
        if ref.tag is None:
            raise PackageError(f"{ref}: a model needs a tag")
        with contextlib.suppress(StoreError):
            for old in variants_of(store, ref):
                if old.name not in names:
                    store.untag(ref.with_tag(variant_tag(ref.tag, old.name)))
        tags = tag_model(store, ref, index)
        return index, variants, tags


def _meta(ctx: BuildContext) -> ModelMeta:
    plan, f = ctx.plan, ctx.fetched
    template, system = plan.template, plan.system
    params: dict[str, object] = dict(plan.parameters)
    messages, licenses, task = list(plan.messages), list(plan.licenses), plan.task
    if f is not None and (files := f.inherited) is not None:
        template = template if template is not None else files.template
        system = system if system is not None else files.system
        params = {**files.params, **params}
        if not messages:
            messages = [Message(role=m["role"], content=m["content"]) for m in files.messages]
        licenses = licenses or list(files.licenses)
        if plan.task_inferred and f.variants[0].ref.task:
            task = f.variants[0].ref.task
    return ModelMeta(
        name=ctx.ref.repository,
        task=task,
        template=template,
        system=system,
        parameters=params,
        messages=messages,
        licenses=licenses,
        labels=plan.labels,
        modelfile=plan.text,
    )


def run(ctx: BuildContext) -> str:
    """The package stage: every output of the build into the store as ``ctx.ref``."""
    meta = _meta(ctx)
    runtime = tools.runtime_version() if ctx.options.verify else None
    projector = ctx.projector.weight if ctx.projector is not None else None
    media = cast(tuple[Modality, ...], projector_media(projector.path)) if projector is not None else ()
    payloads = [
        VariantPayload(
            variant=o.variant,
            weight=o.built.weight,
            architecture=o.built.info.architecture,
            param_count=o.built.info.param_count,
            precision=o.built.info.precision,
            adapters=() if o.variant.family == "genai" else (*o.built.adapters, *ctx.adapters),
            verify=o.report,
            runtime=o.runtime or runtime,
            format=o.built.format,
            weight_name=o.built.weight_name,
            extra=o.built.extra,
            annotations=o.built.annotations,
            projector=projector if o.variant.family == "gguf" else None,
            media=media if o.variant.family == "gguf" else (),
        )
        for o in ctx.outputs
    ]
    index, variants, tags = package_model(ctx.store, ctx.ref, meta, payloads)
    for o, d in zip(ctx.outputs, variants, strict=True):
        adapters = 0 if o.variant.family == "genai" else sum(a.size for a in ctx.adapters)
        extra = sum(x.file.size for x in o.built.extra) + adapters
        extra += projector.size if projector is not None and o.variant.family == "gguf" else 0
        o.manifest, o.size = d.digest, o.built.weight.size + extra
    ctx.index_digest, ctx.tags = index.digest, tags
    return f"{ctx.ref} → {index.digest[:19]}"
