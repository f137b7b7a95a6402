"""The genai stage: ONNX Runtime GenAI variants (chat/generate models on onnxruntime), through the cache.

Each (precision, device) export is one build-cache entry keyed by the source folder's digest, the
precision, the execution provider and the versions of the builder's packages, so a rebuild with nothing
changed runs no builder. The GGUF conversion (the verify reference) still runs in the convert stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from ffbuild.build_context import BuildContext, BuildError, Built, TensorInfo, VariantOutput
from ffbuild.cache import CacheValue, file_digest, folder_digest
from ffbuild.plan import Variant
from ffbuild.stages.fetch import FetchedKind
from ffbuild.stages.genai import (
    BUILDER_PACKAGES,
    GenAIError,
    check_device,
    export,
    is_genai,
    media_type,
    output_files,
)
from ffbuild.stages.package import ExtraLayer, WeightFile
from ffbuild.stages.tools import package_version


def genai_variants(ctx: BuildContext) -> list[Variant]:
    return [v for v in ctx.plan.variants if is_genai(ctx.plan.task, v.backend)]


def _built(
    ctx: BuildContext, v: Variant, folder: Path, meta: dict[str, CacheValue], secs: float, hit: bool
) -> Built:
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        raise BuildError(f"the genai cache entry {folder.parent} is damaged; delete it and build again")
    out: list[tuple[str, WeightFile]] = []
    for name, info in sorted(files.items()):
        path = folder / name
        if not isinstance(info, list) or len(info) != 2 or not path.is_file():
            raise BuildError(f"the genai cache entry {folder.parent} is damaged; delete it and build again")
        digest, size = info
        assert isinstance(digest, str) and isinstance(size, int)
        out.append((name, WeightFile(path, digest, size, build_owned=True)))
    graph = next((w for n, w in out if n.endswith(".onnx")), None)
    if graph is None or ctx.base is None:
        raise BuildError(f"the genai export in {folder} has no .onnx graph")
    base = ctx.base.info
    facts = TensorInfo(base.architecture, base.param_count, v.quantization)  # the model, at this precision
    extra = tuple(ExtraLayer(media_type(n), n, w) for n, w in out if w is not graph)
    return Built(
        v.quantization, graph, facts, secs, hit, format="onnx", weight_name=graph.path.name, extra=extra
    )


def genai_stage(ctx: BuildContext) -> str:
    todo = genai_variants(ctx)
    if not todo:
        return "no ONNX Runtime GenAI variants"
    f = ctx.fetched
    if f is None or f.kind != FetchedKind.HF_FOLDER or f.path is None:
        raise BuildError(
            "ONNX Runtime GenAI variants are exported from Hugging Face weights: FROM a model folder or "
            f"hf://org/repo, not {f.description if f else 'nothing'}"
        )
    source = f.path
    source_digest = folder_digest(source)
    packages: dict[str, CacheValue] = {p: package_version(p) for p in BUILDER_PACKAGES}
    made = 0
    for v in todo:
        try:
            if ctx.options.verify:
                check_device(v.device)
        except GenAIError as exc:
            raise BuildError(f"variant {v.name}: {exc}") from None
        key = ctx.cache_key(
            "genai", source=source_digest, precision=v.quantization, device=v.device, packages=packages
        )
        ctx.progress.step("genai", f"{f.description} → {v.quantization} ONNX ({v.device})")

        def produce(folder: Path, v: Variant = v) -> dict[str, CacheValue]:
            out = folder  # flat: the cache fsyncs the entry's files, not folders
            try:
                export(source, out, precision=v.quantization, device=v.device, threads=ctx.options.threads)
            except GenAIError as exc:
                raise BuildError(f"variant {v.name}: {exc}") from None
            files: dict[str, CacheValue] = {
                p.name: [file_digest(p), p.stat().st_size] for p in output_files(out)
            }
            return {"files": files}

        start = time.perf_counter()
        entry, hit = ctx.cache.run("genai", key, produce)
        made += not hit
        built = _built(ctx, v, entry.path, entry.meta, time.perf_counter() - start, hit)
        ctx.outputs.append(VariantOutput(v, built))
    return f"{len(todo)} GenAI variant(s); {made} exported, {len(todo) - made} from the cache"
