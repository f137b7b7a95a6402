"""ONNX graph → int8 or fp16 graph, and the signature of a graph given as ``FROM model.onnx``.

- ``int8``: onnxruntime's dynamic quantization (int8 weights, activations quantized at run time),
  per-channel by default: per-tensor int8 drops MiniLM to cosine 0.93, per-channel keeps ~0.98
  (design.md §6). ``TARGET … per_channel=false`` asks for per-tensor.
- ``fp16``: onnxruntime's float16 converter, inputs and outputs kept in their own types, so the
  served interface does not change with the precision.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from ffbuild.stages.errors import StageError
from ffruntime.graph_spec import GraphSpec, IOSpec


class GraphError(StageError):
    """An ONNX graph cannot be read, quantized or converted."""


def quantize_int8(source: Path, out: Path, *, per_channel: bool = True) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_dynamic(str(source), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    except Exception as exc:  # onnxruntime.quantization raises plain exceptions
        raise GraphError(f"int8 quantization of {source.name} failed: {type(exc).__name__}: {exc}") from None


def convert_fp16(source: Path, out: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        onnx.save(model, str(out))
    except Exception as exc:  # onnx raises many types for a graph it cannot convert
        raise GraphError(f"fp16 conversion of {source.name} failed: {type(exc).__name__}: {exc}") from None


def graph_signature(path: Path) -> GraphSpec:
    """A ``TASK tensor`` spec from the graph's own inputs and outputs (checked by loading it)."""
    import onnxruntime as ort

    from ffruntime.runtime import RequestRejected
    from ffruntime.tensors import onnx_datatype

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own Fail / InvalidGraph / InvalidProtobuf
        raise GraphError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None

    def io_spec(arg: Any) -> IOSpec:
        name, typ, shape = arg.name, arg.type, arg.shape
        try:
            datatype = onnx_datatype(typ)
        except RequestRejected as exc:
            raise GraphError(
                f"{path}: {name} is {typ}; only tensors can be served (for scikit-learn classifiers "
                "convert with options={'zipmap': False})"
            ) from exc
        dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
        return IOSpec(name=name, datatype=datatype, shape=dims)

    return GraphSpec(
        task="tensor",
        inputs=tuple(io_spec(a) for a in sess.get_inputs()),
        outputs=tuple(io_spec(a) for a in sess.get_outputs()),
    )


def graph_params(path: Path) -> int:
    """Elements over the graph's initializers (its weights)."""
    import math

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(math.prod(t.dims) for t in model.graph.initializer)
