"""Verify a tensor variant against its source: cosine of the outputs on a fixed set of inputs.

The variant is loaded through ``ffruntime`` exactly as the server loads it (same backend module, same
tokenizer, same padding and batching code) and run on :data:`SENTENCES` (text models) or on inputs
made from a fixed seed (``TASK tensor`` graphs). The reference is the source model: the Hugging Face
weights in PyTorch (eager, fp32) for exported models, the source graph in onnxruntime for
``FROM model.onnx``. The figure is the smallest cosine over the inputs (per row for text models, per
output tensor for tensor graphs): one bad input is enough to fail.

:func:`run` is the build's ``verify-tensor`` stage: every tensor variant measured (cached) and held to
the Modelfile's ``VERIFY min_cosine`` (default by precision, :data:`DEFAULT_MIN_COSINE`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydantic import BaseModel

from ffbuild.cache import CacheValue, file_digest, folder_digest
from ffbuild.stages import tools
from ffbuild.stages.context import BuildContext, BuildError, FetchedKind, VariantOutput, as_number
from ffruntime.graph_spec import GraphSpec, read_graph_spec
from ffruntime.settings import LoadSettings

SENTENCES: Final = (
    "A man is eating food.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates again.",
    "Paris",
    "Quantum computers use qubits, which can be in a superposition of states, to solve some problems "
    "much faster than classical computers; building reliable ones is still an open engineering problem.",
    "¿Dónde está la biblioteca? 图书馆在哪里？",
    "The cat sat on the mat.",
)
DEFAULT_MIN_COSINE: Final = {"fp32": 0.999, "fp16": 0.99, "int8": 0.98}


class TensorVerifyReport(BaseModel):
    loads: bool
    cosine: float | None = None  # the smallest cosine over the inputs
    cosine_mean: float | None = None
    inputs: int = 0
    reference: str = ""  # "pytorch" or "source-graph"
    error: str | None = None


def _cosine(a: Any, b: Any) -> float:
    """Cosine of two outputs; for text and boolean tensors the share of equal elements."""
    ea, eb = np.asarray(a), np.asarray(b)
    if ea.dtype.kind in "OUSb" or eb.dtype.kind in "OUSb":
        same = ea.shape == eb.shape
        return float(np.mean(ea.reshape(-1) == eb.reshape(-1))) if same and ea.size else float(same)
    x, y = np.asarray(a, dtype=np.float64).reshape(-1), np.asarray(b, dtype=np.float64).reshape(-1)
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if np.array_equal(x, y) else 0.0
    return float(np.dot(x, y) / (nx * ny))


async def _load(backend: str, files: Mapping[str, Path], threads: int | None, device: str) -> Any:
    from ffruntime.local import load_files

    return await load_files(backend, dict(files), LoadSettings(threads=threads or 0, device=device))


def _text_reference(folder: Path, spec: GraphSpec, rt: Any) -> Any:
    from ffbuild.stages.onnx_export import reference_outputs
    from ffruntime.graph_runtime import pad_rows

    rows = rt.tokenize(list(SENTENCES), True)
    ids, mask = pad_rows(rows, max(len(r) for r in rows))
    return reference_outputs(folder, spec.task, ids, mask)


def tensor_inputs(spec: GraphSpec, seed: int = 0) -> dict[str, Any]:
    """Fixed inputs for a tensor graph: dynamic axes 3 long, floats N(0,1), integers 0..9, bools."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for s in spec.inputs:
        shape = tuple(3 if d < 0 else d for d in s.shape)
        if s.datatype in ("FP16", "FP32", "FP64"):
            from ffruntime.tensors import DATATYPES

            out[s.name] = rng.standard_normal(shape).astype(np.dtype(DATATYPES[s.datatype]))
        elif s.datatype == "BOOL":
            out[s.name] = rng.integers(0, 2, shape).astype(bool)
        elif s.datatype == "BYTES":
            out[s.name] = np.array([b"x"] * int(np.prod(shape)), dtype=object).reshape(shape)
        else:
            from ffruntime.tensors import DATATYPES

            out[s.name] = rng.integers(0, 10, shape).astype(np.dtype(DATATYPES[s.datatype]))
    return out


def _compared(cosines: list[float], reference: str) -> TensorVerifyReport:
    """The report of a variant that loaded: its worst and mean cosine against ``reference``."""
    return TensorVerifyReport(
        loads=True, cosine=min(cosines), cosine_mean=float(np.mean(cosines)), inputs=len(cosines),
        reference=reference,
    )


def verify_tensor(
    backend: str,
    files: Mapping[str, Path],
    *,
    source_folder: Path | None,
    source_graph: Path | None,
    threads: int | None = None,
    device: str = "cpu",
) -> TensorVerifyReport:
    """Load the variant made of ``files`` with ``backend`` and compare it with its source."""
    from ffruntime.errors import BackendUnavailable, RuntimeFailure
    from ffruntime.runtime import CancelFlag, RequestRejected

    spec = read_graph_spec(dict(files))

    async def run() -> TensorVerifyReport:
        rt = await _load(backend, files, threads, device)
        try:
            if spec.text:
                if source_folder is None:
                    raise RuntimeFailure("a text model needs its Hugging Face folder to verify against")
                got, _ = await rt.run_text(list(SENTENCES), True, CancelFlag())
                ref = await asyncio.to_thread(_text_reference, source_folder, spec, rt)
                cosines = [_cosine(a, b) for a, b in zip(got, ref, strict=True)]
                return _compared(cosines, "pytorch")
            if source_graph is None:
                raise RuntimeFailure("a tensor graph needs its source graph to verify against")
            feeds = tensor_inputs(spec)
            from ffruntime.onnxruntime import session, string_feeds

            ref_sess = session(source_graph, "cpu", threads or 1)
            names = [o.name for o in spec.outputs]
            ref = dict(zip(names, ref_sess.run(names, string_feeds(feeds)), strict=True))
            got = await asyncio.to_thread(rt.run_graph, feeds)
            cosines = [_cosine(got[n], ref[n]) for n in names]
            return _compared(cosines, "source-graph")
        finally:
            await rt.close()

    try:
        return asyncio.run(run())
    except (BackendUnavailable, RuntimeFailure, RequestRejected) as exc:
        return TensorVerifyReport(loads=False, error=str(exc))


def _variant_files(out: VariantOutput) -> dict[str, Path]:
    files = {out.built.weight_name: out.built.weight.path}
    files.update({x.filepath: x.file.path for x in out.built.extra})
    return files


def _threshold(ctx: BuildContext, quant: str) -> float:
    p = ctx.plan.verify.min_cosine
    return p if p is not None else DEFAULT_MIN_COSINE.get(quant, 0.98)


def _runtime_name(backend: str) -> str:
    dist = {"onnxruntime": "onnxruntime", "tvm": "apache-tvm", "tensorrt": "tensorrt"}.get(backend, backend)
    return f"{dist} {tools.package_version(dist) or 'unknown'}"


def run(ctx: BuildContext) -> str:
    """The verify-tensor stage: a report for each tensor output; a variant below its threshold fails."""
    if not ctx.options.verify:
        return "skipped (--no-verify)"
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
