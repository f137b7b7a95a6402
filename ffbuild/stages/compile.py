"""The compile stage (:func:`run`): the tensor family's compiled variants, from the export stage's graphs.

TVM libraries come from :mod:`ffbuild.stages.tvm_compile`, TensorRT engines from
:mod:`ffbuild.stages.tensorrt_build`, each through the build cache; onnxruntime variants run the graphs
as they are and compile nothing.
"""

from __future__ import annotations

from ffbuild.stages.context import BuildContext, BuildError, VariantOutput
from ffbuild.stages.onnx_export import graph_for
from ffbuild.stages.tensorrt_build import build_engine_variant
from ffbuild.stages.tvm_compile import compile_tvm_variant


def run(ctx: BuildContext) -> str:
    """The compile stage: one output per TVM or TensorRT variant of the plan."""
    done = []
    for v in ctx.plan.variants:
        if v.backend == "onnxruntime":
            continue
        graph = graph_for(ctx, v)
        if v.backend == "tvm":
            built = compile_tvm_variant(ctx, v, graph)
        elif v.backend == "tensorrt":
            built = build_engine_variant(ctx, v, graph)
        else:
            raise BuildError(f"variant {v.name}: no compile stage for backend {v.backend}")
        quant = graph.quantization
        ctx.outputs.append(VariantOutput(v.model_copy(update={"quantization": quant}), built))
        done.append(v.name + ("" if built.cached else " (compiled)"))
    return ", ".join(done) if done else "nothing to compile"
