"""The tensor-family stages (onnxruntime, tvm, tensorrt): export → compile → verify, each cached.

- ``export``: the ONNX fp32 graph — exported from the Hugging Face folder (:mod:`ffbuild.stages.onnx_export`)
  or the ``FROM model.onnx`` graph as it is — then the fp16/int8 graphs the variants ask for
  (:mod:`ffbuild.stages.onnx_quantize`). onnxruntime variants are these graphs.
- ``compile``: TVM libraries (:mod:`ffbuild.stages.tvm_compile`) and TensorRT engines
  (:mod:`ffbuild.stages.tensorrt_build`) from those graphs.
- ``verify-tensor``: every variant loaded through ``ffruntime`` and compared with the source model.

Each variant's layers: the weight (``model.onnx``, TVM libraries, ``model.plan``), ``graph.json`` (what
it takes and gives) and, for text models, the tokenizer files.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ffbuild.build_context import BuildContext, BuildError, Built, TensorInfo, VariantOutput, as_number
from ffbuild.cache import CacheValue, file_digest, folder_digest
from ffbuild.plan import Variant
from ffbuild.stages import tools
from ffbuild.stages.fetch import FetchedKind
from ffbuild.tensor_layers import entry_layers, owned
from ffruntime.graph_spec import GRAPH_SPEC_FILE
from registry.choices import BACKENDS

_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8": "int8"}


def variant_family(v: Variant) -> str:
    """``gguf`` for llama.cpp variants, ``tensor`` for the ONNX family (onnxruntime, tvm, tensorrt)."""
    return "gguf" if BACKENDS[v.backend]["format"] == "gguf" else "tensor"


def cached_folder(
    ctx: BuildContext, stage: str, key: str, make: Callable[[Path], dict[str, CacheValue]]
) -> tuple[Path, dict[str, CacheValue], float, bool]:
    """Run ``make(folder)`` through the cache; the folder, its metadata, seconds spent and hit flag."""
    start = time.perf_counter()
    entry, hit = ctx.cache.run(stage, key, make)
    if not entry.file(GRAPH_SPEC_FILE).is_file():
        raise BuildError(f"the {stage} cache entry {entry.path} is damaged; delete it and build again")
    return entry.path, entry.meta, time.perf_counter() - start, hit


def _graph_built(quant: str, folder: Path, meta: dict[str, CacheValue], secs: float, hit: bool) -> Built:
    files = meta.get("files")
    if not isinstance(files, list):
        raise BuildError(f"the cache entry {folder} is damaged; delete it and build again")
    info = TensorInfo(
        str(meta.get("architecture") or "onnx"), int(as_number(meta.get("params"))), _PRECISION[quant]
    )
    return Built(
        quant,
        owned(folder / "model.onnx"),
        info,
        secs,
        hit,
        format="onnx",
        weight_name="model.onnx",
        extra=entry_layers(folder, [str(f) for f in files if f != "model.onnx"], set()),
    )


def _base_graph(ctx: BuildContext) -> Built:
    """The fp32 ONNX graph: exported from the HF folder, or the source graph (copied into the cache)."""
    f = ctx.fetched
    assert f is not None
    versions: dict[str, CacheValue] = dict(tools.tensor_tools())
    if f.kind == FetchedKind.HF_FOLDER:
        from ffbuild.stages.onnx_export import export_hf

        assert f.path is not None
        folder_src = f.path
        task = ctx.plan.task
        key = ctx.cache_key("onnx_export", source=folder_digest(folder_src), task=task, versions=versions)

        def make(out: Path) -> dict[str, CacheValue]:
            info = export_hf(folder_src, out, task)
            (out / GRAPH_SPEC_FILE).write_text(info.spec.model_dump_json(), encoding="utf-8")
            files: list[CacheValue] = [p.name for p in sorted(out.iterdir())]
            return {"architecture": info.architecture, "params": info.param_count, "files": files}

        ctx.progress.step("export", f"{f.description} → ONNX ({task})")
    elif f.kind == FetchedKind.ONNX:
        from ffbuild.stages.onnx_quantize import graph_params, graph_signature

        assert f.path is not None
        graph_src = f.path
        if ctx.plan.task != "tensor":
            raise BuildError(
                f"FROM {graph_src.name}: an ONNX graph is served as TASK tensor, not {ctx.plan.task}"
            )
        key = ctx.cache_key("onnx_source", source=file_digest(graph_src), versions=versions)

        def make(out: Path) -> dict[str, CacheValue]:
            spec = graph_signature(graph_src)
            shutil.copyfile(graph_src, out / "model.onnx")
            (out / GRAPH_SPEC_FILE).write_text(spec.model_dump_json(), encoding="utf-8")
            return {
                "architecture": "onnx",
                "params": graph_params(graph_src),
                "files": ["graph.json", "model.onnx"],
            }

        ctx.progress.step("export", f"{f.description}: the graph as it is")
    else:
        raise BuildError(
            f"FROM {f.description}: ONNX-family variants are built from a Hugging Face folder or a .onnx file"
        )
    folder, meta, secs, hit = cached_folder(ctx, "onnx_export", key, make)
    return _graph_built("fp32", folder, meta, secs, hit)


def _derived_graph(ctx: BuildContext, base: Built, quant: str, per_channel: bool) -> Built:
    from ffbuild.stages.onnx_quantize import convert_fp16, quantize_int8

    key = ctx.cache_key(
        "onnx_quantize",
        source=base.weight.digest,
        quantization=quant,
        per_channel=per_channel,
        versions=dict(tools.tensor_tools()),
    )

    def make(out: Path) -> dict[str, CacheValue]:
        if quant == "int8":
            quantize_int8(base.weight.path, out / "model.onnx", per_channel=per_channel)
        else:
            convert_fp16(base.weight.path, out / "model.onnx")
        for x in base.extra:
            shutil.copyfile(x.file.path, out / x.filepath)
        files: list[CacheValue] = [p.name for p in sorted(out.iterdir())]
        return {"architecture": base.info.architecture, "params": base.info.param_count, "files": files}

    ctx.progress.step("export", f"fp32 → {quant}")
    folder, meta, secs, hit = cached_folder(ctx, "onnx_quantize", key, make)
    return _graph_built(quant, folder, meta, secs, hit)


def _per_channel(v: Variant) -> bool:
    return v.options.get("per_channel", "true").lower() not in ("false", "0", "no")


def export_stage(ctx: BuildContext) -> str:
    base = _base_graph(ctx)
    ctx.graphs["fp32"] = base
    for v in ctx.plan.variants:
        quant = v.quantization if v.quantization != "source" else "fp32"
        name = f"{quant}{'' if _per_channel(v) else '-per-tensor'}"
        if name not in ctx.graphs:
            ctx.graphs[name] = _derived_graph(ctx, base, quant, _per_channel(v))
        if v.backend == "onnxruntime":
            ctx.outputs.append(VariantOutput(v.model_copy(update={"quantization": quant}), ctx.graphs[name]))
    made = sum(not b.cached for b in ctx.graphs.values())
    return f"{', '.join(ctx.graphs)}; {made} made, {len(ctx.graphs) - made} from the cache"


def graph_for(ctx: BuildContext, v: Variant) -> Built:
    quant = v.quantization if v.quantization != "source" else "fp32"
    return ctx.graphs[f"{quant}{'' if _per_channel(v) else '-per-tensor'}"]


def compile_stage(ctx: BuildContext) -> str:
    done = []
    for v in ctx.plan.variants:
        if v.backend == "onnxruntime":
            continue
        graph = graph_for(ctx, v)
        if v.backend == "tvm":
            from ffbuild.stages.tvm_compile import compile_tvm_variant

            built = compile_tvm_variant(ctx, v, graph)
        elif v.backend == "tensorrt":
            from ffbuild.stages.tensorrt_build import build_engine_variant

            built = build_engine_variant(ctx, v, graph)
        else:
            raise BuildError(f"variant {v.name}: no compile stage for backend {v.backend}")
        quant = graph.quantization
        ctx.outputs.append(VariantOutput(v.model_copy(update={"quantization": quant}), built))
        done.append(v.name + ("" if built.cached else " (compiled)"))
    return ", ".join(done) if done else "nothing to compile"


def _variant_files(out: VariantOutput) -> dict[str, Path]:
    files = {out.built.weight_name: out.built.weight.path}
    files.update({x.filepath: x.file.path for x in out.built.extra})
    return files


def _threshold(ctx: BuildContext, quant: str) -> float:
    from ffbuild.stages.verify_tensor import DEFAULT_MIN_COSINE

    p = ctx.plan.verify.min_cosine
    return p if p is not None else DEFAULT_MIN_COSINE.get(quant, 0.98)


def verify_tensor_stage(ctx: BuildContext) -> str:
    if not ctx.options.verify:
        return "skipped (--no-verify)"
    from ffbuild.stages.verify_tensor import verify_tensor

    f = ctx.fetched
    assert f is not None
    folder = f.path if f.kind == FetchedKind.HF_FOLDER else None
    source_graph = f.path if f.kind == FetchedKind.ONNX else None
    failures: list[str] = []
    names = []
    for out in [o for o in ctx.outputs if o.built.format != "gguf"]:
        files = _variant_files(out)
        key = ctx.cache_key(
            "verify_tensor",
            backend=out.variant.backend,
            files={k: file_digest(p) for k, p in sorted(files.items())},
            source=folder_digest(folder) if folder else file_digest(source_graph) if source_graph else None,
            versions=dict(tools.tensor_tools()),
        )

        def produce(
            _: Path, out: VariantOutput = out, files: dict[str, Path] = files
        ) -> dict[str, CacheValue]:
            start = time.perf_counter()
            report = verify_tensor(
                out.variant.backend,
                files,
                source_folder=folder,
                source_graph=source_graph,
                threads=ctx.options.threads,
                device=out.variant.target,
            )
            return {"report": report.model_dump(mode="json"), "seconds": time.perf_counter() - start}

        ctx.progress.step("verify-tensor", out.variant.name)
        entry, hit = ctx.cache.run("verify_tensor", key, produce)
        report = entry.meta.get("report")
        if not isinstance(report, dict):
            raise BuildError(f"the verify cache entry {entry.path} is damaged; delete it and build again")
        out.report = dict(report)
        out.runtime = _runtime_name(out.variant.backend)
        out.verify_seconds = as_number(entry.meta.get("seconds")) if not hit else 0.0
        out.verified_now = not hit
        threshold = _threshold(ctx, out.built.quantization)
        cos = report.get("cosine")
        if report.get("loads") is False:
            failures.append(f"{out.variant.name}: the model does not load ({report.get('error')})")
        elif not isinstance(cos, int | float) or cos < threshold:
            failures.append(f"{out.variant.name}: cosine {cos} to the source is below min_cosine {threshold}")
        names.append(f"{out.variant.name} {as_number(cos):.4f}")
    if failures:
        raise BuildError("verify failed, nothing was stored:\n  " + "\n  ".join(failures))
    return "cosine to the source: " + ", ".join(names)


def _runtime_name(backend: str) -> str:
    dist = {"onnxruntime": "onnxruntime", "tvm": "apache-tvm", "tensorrt": "tensorrt"}.get(backend, backend)
    return f"{dist} {tools.package_version(dist) or 'unknown'}"
