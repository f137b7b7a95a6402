"""ONNX graph → TensorRT engine (``model.plan``) with the TensorRT Python API, on the target GPU.

The network is parsed from the ONNX graph (strongly typed: TensorRT 10+/11 take fp16 and int8 from the
graph's casts and Q/DQ nodes, not from builder flags, design.md §6), with one optimization profile
over the dynamic axes: batch 1‥``max_batch`` (default 32), sequence 1‥``max_length``, tuned for
``opt_batch`` × ``opt_seq_len``. The engine's TensorRT version and the GPU's compute capability go into
the annotations: an engine runs only with that TensorRT on that GPU generation.

Where TensorRT or an NVIDIA GPU is missing (as on every machine this project is tested on: the PyPI
wheels are stubs that download from an unreachable host), the build stops with a message naming what
to install; nothing here claims an engine was built unless TensorRT built it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffbuild.cache import CacheValue
from ffbuild.stages.context import BuildContext, BuildError, Built
from ffbuild.stages.errors import StageError
from ffbuild.stages.tensor_layers import entry_layers, owned, spec_of
from ffruntime.graph_spec import GRAPH_SPEC_FILE, GraphSpec

if TYPE_CHECKING:
    from ffbuild.plan import Variant

ENGINE_FILE = "model.plan"
INSTALL = (
    "TensorRT is not installed: install NVIDIA TensorRT 10 or later for this CUDA version "
    "(pip install tensorrt-cu12 from pypi.nvidia.com, or NVIDIA's TensorRT container) on a machine "
    "with an NVIDIA GPU"
)


class TensorRTError(StageError):
    """TensorRT is missing, finds no GPU, or cannot build this graph."""


def tensorrt_module() -> Any:
    """The ``tensorrt`` module, or a :class:`TensorRTError` naming what to install."""
    try:
        import tensorrt
    except ImportError:
        raise TensorRTError(INSTALL) from None
    except Exception as exc:  # the PyPI stubs raise at import when their download fails
        raise TensorRTError(f"{INSTALL} (importing tensorrt failed: {exc})") from None
    return tensorrt


def compute_capability() -> str:
    """The first GPU's compute capability (``sm_90``), or a :class:`TensorRTError` when there is none."""
    from registry.select import detect_host

    caps = sorted(detect_host().cuda_capabilities)
    if not caps:
        raise TensorRTError("TensorRT needs an NVIDIA GPU, and nvidia-smi finds none on this machine")
    return caps[0]


def build_engine(onnx_path: Path, out: Path, spec: GraphSpec, options: dict[str, str]) -> dict[str, str]:
    """Build ``out/model.plan``; return the annotations (TensorRT version, compute capability)."""
    trt = tensorrt_module()
    cc = compute_capability()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    max_batch = int(options.get("max_batch", "32"))
    longest = spec.max_length or 512
    opt_batch = min(int(options.get("opt_batch", "8")), max_batch)
    opt_seq = min(int(options.get("opt_seq_len", "128")), longest)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        low = [1 if d < 0 else d for d in dims]
        opt = [opt_batch if k == 0 and d < 0 else opt_seq if d < 0 else d for k, d in enumerate(dims)]
        high = [max_batch if k == 0 and d < 0 else longest if d < 0 else d for k, d in enumerate(dims)]
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTError(f"TensorRT could not build an engine from {onnx_path.name} (see its log above)")
    (out / ENGINE_FILE).write_bytes(bytes(serialized))
    return {
        "io.ferrousforge.tensorrt.version": str(trt.__version__),
        "io.ferrousforge.tensorrt.compute-capability": cc,
    }


def build_engine_variant(ctx: BuildContext, v: Variant, graph: Built) -> Built:
    """The TensorRT variant of ``graph``, through the build cache (keyed by TensorRT version and GPU)."""
    try:
        trt = tensorrt_module()
        cc = compute_capability()
    except TensorRTError as exc:
        raise BuildError(f"variant {v.name}: {exc}") from None
    spec = spec_of(graph)
    key = ctx.cache_key(
        "tensorrt_build",
        graph=graph.weight.digest,
        tensorrt=str(trt.__version__),
        gpu=cc,
        options=dict(sorted(v.options.items())),
    )

    def make(out: Path) -> dict[str, CacheValue]:
        ann = build_engine(graph.weight.path, out, spec, dict(v.options))
        for x in graph.extra:
            shutil.copyfile(x.file.path, out / x.filepath)
        return {"annotations": dict(ann), "files": [p.name for p in sorted(out.iterdir())]}

    ctx.progress.step("compile", f"{v.name}: TensorRT {trt.__version__} engine for {cc}")
    start = time.perf_counter()
    try:
        entry, hit = ctx.cache.run("tensorrt_build", key, make)
    except TensorRTError as exc:
        raise BuildError(f"variant {v.name}: {exc}") from None
    ann = entry.meta.get("annotations")
    names = [n for n in (entry.meta.get("files") or []) if isinstance(n, str) and n != ENGINE_FILE]  # type: ignore[union-attr]
    if not isinstance(ann, dict) or GRAPH_SPEC_FILE not in names:
        raise BuildError(f"the tensorrt_build cache entry {entry.path} is damaged; delete it and build again")
    return Built(
        graph.quantization,
        owned(entry.path / ENGINE_FILE),
        graph.info,
        time.perf_counter() - start,
        hit,
        format="tensorrt",
        weight_name=ENGINE_FILE,
        extra=entry_layers(entry.path, names, set()),
        annotations={str(k): str(val) for k, val in ann.items()},
    )
