"""ONNX graph → Apache TVM (Relax) libraries, one per shape bucket, plus the parameters.

The graph is imported with the Relax ONNX frontend (the export's explicit 4-D mask and cumsum
position ids are what make it importable, design.md §6) with its weights kept as inputs, so every
bucket's library shares one ``params.npz``. Shapes are static per bucket — ``TARGET cpu BACKEND tvm
seq_len=32,128 batch=1,8`` — and the runtime pads a request to the smallest bucket that holds it
(untuned dynamic shapes are the slowest case of an already slow untuned build; MetaSchedule tuning
needs static shapes anyway). The largest sequence bucket is always the model's ``max_length``.

Targets: ``cpu`` → ``llvm -mcpu=<host cpu>`` (or ``mcpu=…``); ``cuda``, ``vulkan``, ``metal`` when the
installed TVM has their code generator (GPU modules get dlight's default schedules), else a clear
error naming what is missing. ``tune_trials=N`` runs MetaSchedule on the CPU buckets and keeps its
database as a build-cache entry, so a rebuild never tunes twice.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ffbuild.cache import CacheValue
from ffbuild.stages import tools
from ffbuild.stages.context import BuildContext, BuildError, Built
from ffbuild.stages.errors import StageError
from ffbuild.stages.tensor_layers import entry_layers, owned, spec_of
from ffruntime.graph_spec import GRAPH_SPEC_FILE, GraphSpec

if TYPE_CHECKING:
    from ffbuild.plan import Variant

DEFAULT_SEQ_LENS: Final = (32, 128)
DEFAULT_BATCHES: Final = (1, 8)
PARAMS_FILE: Final = "params.npz"
_CODEGEN: Final = {"cpu": "llvm", "cuda": "cuda", "vulkan": "vulkan", "metal": "metal", "rocm": "rocm"}


class TVMError(StageError):
    """TVM cannot compile this graph for this target (missing code generator, import failure)."""


def bucket_file(batch: int, seq: int) -> str:
    return f"tvm-b{batch}-s{seq}.so"


def _numbers(text: str | None, default: tuple[int, ...], what: str) -> tuple[int, ...]:
    if text is None:
        return default
    try:
        values = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise TVMError(f"TARGET … {what}={text}: expected numbers separated by commas") from None
    if not values or values[0] < 1 or len(values) > 8:
        raise TVMError(f"TARGET … {what}={text}: 1 to 8 positive numbers")
    return values


def buckets(spec: GraphSpec, options: dict[str, str]) -> tuple[tuple[int, int], ...]:
    longest = spec.max_length or 512
    seqs = {s for s in _numbers(options.get("seq_len"), DEFAULT_SEQ_LENS, "seq_len") if s <= longest}
    seqs.add(longest)
    batches = _numbers(options.get("batch"), DEFAULT_BATCHES, "batch")
    return tuple((b, s) for b in batches for s in sorted(seqs))


def target_string(device: str, options: dict[str, str]) -> str:
    """The TVM target for a TARGET device (``llvm -mcpu=…``, ``cuda``), or a :class:`TVMError` saying
    what the install lacks."""
    import tvm

    codegen = _CODEGEN.get(device)
    if codegen is None:
        raise TVMError(f"TVM has no target for {device}")
    if tvm.get_global_func(f"target.build.{codegen}", allow_missing=True) is None:
        raise TVMError(
            f"the installed TVM ({tvm.__version__}) was built without the {codegen} code generator; "
            f"install a TVM built with USE_{codegen.upper()}=ON to compile for {device}"
        )
    if device != "cpu":
        return codegen
    from tvm.target import codegen as cg

    mcpu = options.get("mcpu") or cg.llvm_get_system_cpu()
    if not cg.llvm_is_valid_cpu(mcpu, ""):
        raise TVMError(f"mcpu={mcpu}: LLVM does not know this CPU")
    return f"llvm -mcpu={mcpu}"


def _import(onnx_path: Path, batch: int, seq: int) -> tuple[Any, list[Any]]:
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    shapes = {"input_ids": [batch, seq], "attention_mask": [batch, seq]}
    try:
        mod = from_onnx(onnx.load(str(onnx_path)), shape_dict=shapes, keep_params_in_input=True)
    except Exception as exc:  # the importer raises many types for ops it cannot take
        raise TVMError(
            f"TVM's Relax ONNX importer cannot take {onnx_path.name}: {type(exc).__name__}: {exc}"
        ) from None
    mod, params = relax.frontend.detach_params(mod)
    return mod, [p.numpy() for p in params["main"]]


def make_target(target: str) -> Any:
    """``llvm -mcpu=x`` → TVM's Target (0.27 takes only the dict form)."""
    import tvm

    kind, *rest = target.split()
    spec: dict[str, object] = {"kind": kind}
    for word in rest:
        key, _, value = word.lstrip("-").partition("=")
        spec[key] = int(value) if value.isdigit() else value
    return tvm.target.Target(spec)


def _build(mod: Any, target: str, database: Path | None) -> Any:
    import tvm
    from tvm import relax

    tgt = make_target(target)
    if tgt.kind.name != "llvm":
        from tvm.s_tir import dlight

        mod = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(relax.transform.LegalizeOps()(mod))
    with tvm.transform.PassContext(opt_level=3):
        if database is not None:
            from tvm.s_tir import meta_schedule as ms

            db = ms.database.JSONDatabase(work_dir=str(database))
            with db, tgt:
                mod = relax.transform.MetaScheduleApplyDatabase()(relax.transform.LegalizeOps()(mod))
        return relax.build(mod, target=tgt)


def tune(onnx_path: Path, target: str, bucket: tuple[int, int], trials: int, work_dir: Path) -> None:
    """MetaSchedule tuning of one bucket; the database (JSON records) is written into ``work_dir``."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    from ffruntime.settings import available_cores

    mod, _ = _import(onnx_path, *bucket)
    mod = relax.transform.LegalizeOps()(mod)
    ms.relax_integration.tune_relax(
        mod=mod,
        params={},
        target=make_target(
            target + f" -num-cores={available_cores()}" if target.startswith("llvm") else target
        ),
        work_dir=str(work_dir),
        max_trials_global=trials,
        num_trials_per_iter=min(64, trials),
        cost_model="xgb" if importlib.util.find_spec("xgboost") else "random",
    )


def compile_buckets(
    onnx_path: Path,
    out: Path,
    target: str,
    shapes: tuple[tuple[int, int], ...],
    database: Path | None = None,
) -> None:
    """Write one library per bucket and ``params.npz`` into ``out``."""
    import numpy as np

    params: list[Any] = []
    for batch, seq in shapes:
        mod, params = _import(onnx_path, batch, seq)
        try:
            ex = _build(mod, target, database)
            ex.export_library(str(out / bucket_file(batch, seq)))
        except Exception as exc:  # TVM's TVMError and friends
            raise TVMError(f"TVM could not compile the {batch}×{seq} bucket for {target}: {exc}") from None
    np.savez(out / PARAMS_FILE, **{f"p{i:04d}": p for i, p in enumerate(params)})


def _tuning(
    ctx: BuildContext,
    v: Variant,
    graph: Built,
    target: str,
    shapes: tuple[tuple[int, int], ...],
    trials: int,
    versions: dict[str, CacheValue],
) -> Path:
    """MetaSchedule's tuning records for ``graph`` on ``target`` (``trials`` per bucket), through the
    build cache: the folder holding the ``database_*.json`` files."""
    tune_key = ctx.cache_key(
        "tvm_tune",
        graph=graph.weight.digest,
        target=target,
        buckets=[list(b) for b in shapes],
        trials=trials,
        versions=versions,
    )

    def make_tuning(out: Path) -> dict[str, CacheValue]:
        for b in shapes:
            tune(graph.weight.path, target, b, trials, out / "work")
        for f in (out / "work").glob("database_*.json"):
            shutil.move(str(f), out / f.name)
        shutil.rmtree(out / "work", ignore_errors=True)
        return {"trials": trials}

    ctx.progress.step(
        "compile",
        f"{v.name}: MetaSchedule records, {trials} trials per bucket (the build cache's, or tuned now)",
    )
    entry, _ = ctx.cache.run("tvm_tune", tune_key, make_tuning)
    return entry.path


def compile_tvm_variant(ctx: BuildContext, v: Variant, graph: Built) -> Built:
    """The TVM variant of ``graph`` for ``v``'s target, through the build cache."""
    spec = spec_of(graph)
    if not spec.text:
        raise BuildError(f"variant {v.name}: TVM builds exported text models (embed, classify) only")
    try:
        import tvm
    except ImportError:
        raise BuildError(
            f"variant {v.name} needs Apache TVM: pip install 'ferrousforge[tvm]' "
            "(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1)"
        ) from None
    try:
        target = target_string(v.device, dict(v.options))
        shapes = buckets(spec, dict(v.options))
    except TVMError as exc:
        raise BuildError(f"variant {v.name}: {exc}") from None
    versions: dict[str, CacheValue] = dict(tools.tensor_tools())
    trials = int(v.options.get("tune_trials", "0") or 0)
    database = _tuning(ctx, v, graph, target, shapes, trials, versions) if trials > 0 else None
    key = ctx.cache_key(
        "tvm_compile",
        graph=graph.weight.digest,
        target=target,
        buckets=[list(b) for b in shapes],
        tuned=trials,
        versions=versions,
    )

    def make(out: Path) -> dict[str, CacheValue]:
        compile_buckets(graph.weight.path, out, target, shapes, database)
        tuned = spec.model_copy(update={"buckets": shapes})
        (out / GRAPH_SPEC_FILE).write_text(tuned.model_dump_json(), encoding="utf-8")
        for x in graph.extra:
            if x.filepath != GRAPH_SPEC_FILE:
                shutil.copyfile(x.file.path, out / x.filepath)
        return {"files": [p.name for p in sorted(out.iterdir())]}

    ctx.progress.step("compile", f"{v.name}: TVM {tvm.__version__}, {target}, buckets {shapes}")
    start = time.perf_counter()
    try:
        entry, hit = ctx.cache.run("tvm_compile", key, make)
    except TVMError as exc:
        raise BuildError(f"variant {v.name}: {exc}") from None
    names = [str(n) for n in entry.meta.get("files") or [] if isinstance(n, str)]  # type: ignore[union-attr]
    libs = [n for n in names if n.endswith(".so")]
    if not libs:
        raise BuildError(f"the tvm_compile cache entry {entry.path} is damaged; delete it and build again")
    weights = {*libs, PARAMS_FILE}
    rest = [n for n in names if n != libs[0]]
    return Built(
        graph.quantization,
        owned(entry.path / libs[0]),
        graph.info,
        time.perf_counter() - start,
        hit,
        format="tvm",
        weight_name=libs[0],
        extra=entry_layers(entry.path, rest, weights),
        annotations={"io.ferrousforge.tvm.target": target},
    )
