"""The ONNX Runtime GenAI export: a Hugging Face LLM folder → an ONNX decoder with a KV cache.

``TARGET cpu|cuda BACKEND onnxruntime`` on a chat or generate model runs ONNX Runtime GenAI's model
builder (``python -m onnxruntime_genai.models.builder``, which needs torch, transformers and onnx-ir)
in a subprocess. Its output folder — ``model.onnx``, its external weights ``model.onnx.data``,
``genai_config.json``, the tokenizer files and the chat template — becomes the variant's layers.
QUANTIZE ``int4 | int8 | fp16 | fp32`` are the builder's precisions of the same names.

:func:`run` (the genai stage) exports each variant through the build cache: each (precision, device)
export is one entry keyed by the source folder's digest, the precision, the execution provider and the
versions of the builder's packages, so a rebuild with nothing changed runs no builder. The GGUF
conversion (the verify reference) still runs in the convert stage.

Measured on the SmolLM2-135M folder (2 cores): ``-p int4 -e cpu`` took 8–17 s and wrote 86 MB of
weights (design.md §6).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path
from typing import Final

from ffbuild.cache import CacheValue, file_digest, folder_digest
from ffbuild.plan import Variant
from ffbuild.stages import tether
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    Built,
    ExtraLayer,
    FetchedKind,
    TensorInfo,
    VariantOutput,
    WeightFile,
)
from ffbuild.stages.errors import StageError
from ffbuild.stages.tools import package_version
from registry.oci import MODEL_WEIGHT, MODEL_WEIGHT_CONFIG

PRECISIONS: Final[dict[str, str]] = {"int4": "int4", "int8": "int8", "fp16": "fp16", "fp32": "fp32"}
"""QUANTIZE type → the builder's ``--precision``."""
EXECUTION_PROVIDERS: Final[dict[str, str]] = {"cpu": "cpu", "cuda": "cuda"}
"""TARGET device → the builder's ``--execution_provider``."""
BUILDER_PACKAGES: Final = ("onnxruntime-genai", "onnxruntime", "onnx-ir", "onnx", "torch", "transformers")
"""The distributions whose versions shape the builder's output (part of the build-cache key)."""
CUDA_PACKAGE: Final = "onnxruntime-genai-cuda"
BUILDER: Final = "onnxruntime_genai.models.builder"
_WEIGHT_SUFFIXES: Final = (".onnx", ".onnx.data", ".data")


class GenAIError(StageError):
    """The GenAI export cannot run here (missing packages, no GPU) or the builder failed."""


def media_type(filename: str) -> str:
    """The ModelPack layer type of one builder output: weights for the graph and its data, else config."""
    return MODEL_WEIGHT if filename.endswith(_WEIGHT_SUFFIXES) else MODEL_WEIGHT_CONFIG


def cuda_available() -> bool:
    """Whether the installed onnxruntime-genai has its CUDA provider and a GPU answers."""
    if importlib.util.find_spec("onnxruntime_genai") is None:
        return False
    import onnxruntime_genai as og

    try:
        return bool(og.is_cuda_available())
    except Exception:  # a CPU-only build may raise rather than answer False
        return False


def check_device(device: str) -> None:
    """Refuse, naming what to install, a device this machine cannot build and verify for."""
    if device not in EXECUTION_PROVIDERS:
        raise GenAIError(
            f"ONNX Runtime GenAI variants build for {', '.join(EXECUTION_PROVIDERS)}, not {device}"
        )
    if device == "cuda" and not cuda_available():
        raise GenAIError(
            "TARGET cuda BACKEND onnxruntime (a GenAI LLM) needs an NVIDIA GPU and the CUDA build of ONNX "
            f"Runtime GenAI to build and verify: pip install {CUDA_PACKAGE} (in place of onnxruntime-genai); "
            "this machine has no CUDA provider. Build with --no-verify to export it without a GPU."
        )


def _missing_builder_modules() -> list[str]:
    needed = {"onnxruntime_genai": "onnxruntime-genai", "onnx_ir": "onnx-ir", "torch": "torch"}
    needed["transformers"] = "transformers"
    return [dist for mod, dist in needed.items() if importlib.util.find_spec(mod) is None]


def export(folder: Path, out: Path, *, precision: str, device: str, threads: int | None = None) -> None:
    """Run the model builder on ``folder`` into the empty folder ``out``; raise :class:`GenAIError`."""
    if precision not in PRECISIONS:
        raise GenAIError(f"ONNX Runtime GenAI builds {', '.join(PRECISIONS)}, not {precision}")
    missing = _missing_builder_modules()
    if missing:
        raise GenAIError(
            f"the ONNX Runtime GenAI export needs {', '.join(missing)}: pip install 'ferrousforge[genai]'"
        )
    ep = EXECUTION_PROVIDERS.get(device)
    if ep is None:
        raise GenAIError(f"ONNX Runtime GenAI variants build for cpu and cuda, not {device}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="ff-genai-") as cache:
        args = ["-i", str(folder), "-o", str(out), "-p", PRECISIONS[precision], "-e", ep, "-c", cache]
        # tethered: if ff dies (even by SIGKILL) the builder ends and its partial output goes
        proc = tether.run(BUILDER, args, kind="module", remove=[out, Path(cache)], env=env, cwd=cache)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        raise GenAIError(
            f"the ONNX Runtime GenAI model builder failed on {folder} ({precision}, {ep}):\n  "
            + "\n  ".join(tail)
        )
    if not (out / "genai_config.json").is_file() or not any(out.glob("*.onnx")):
        raise GenAIError(f"the ONNX Runtime GenAI model builder wrote no model into {out}")


def output_files(folder: Path) -> list[Path]:
    """The files of an export, sorted by name (the layer order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


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


def run(ctx: BuildContext) -> str:
    """The genai stage: each ``genai`` variant exported from the Hugging Face folder (cached)."""
    todo = ctx.plan.variants
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
