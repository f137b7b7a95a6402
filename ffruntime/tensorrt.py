"""The TensorRT backend: the variant's serialized engine (``model.plan``) on an NVIDIA GPU.

Device buffers come from PyTorch's CUDA allocator (a CUDA build of torch is the simplest well-kept way
to hold GPU memory from Python); the engine runs with ``execute_async_v3`` on torch's current
stream. Where TensorRT, a CUDA torch or a GPU is missing, loading raises
:class:`~ffruntime.errors.BackendUnavailable` naming what to install. This backend has not run on
any machine of this project (none has TensorRT, design.md §6).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.graph_runtime import Feeds, GraphRuntime
from ffruntime.graph_spec import GraphSpec, read_graph_spec
from ffruntime.runtime import Runtime
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef

ENGINE_FILE = "model.plan"
INSTALL = "pip install tensorrt-cu12 (from pypi.nvidia.com) and a CUDA build of torch, on an NVIDIA GPU"


def _modules() -> tuple[Any, Any]:
    try:
        import tensorrt
        import torch
    except ImportError as exc:
        raise BackendUnavailable(f"the tensorrt backend needs {exc.name}: {INSTALL}") from None
    except Exception as exc:  # the PyPI stubs fail at import
        raise BackendUnavailable(f"importing tensorrt failed ({exc}): {INSTALL}") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"the tensorrt backend finds no CUDA GPU through torch: {INSTALL}")
    return tensorrt, torch


class TensorRTRuntime(GraphRuntime):
    def __init__(self, spec: GraphSpec, files: dict[str, Path]) -> None:
        trt, torch = _modules()
        engine_path = files.get(ENGINE_FILE)
        if engine_path is None:
            raise RuntimeFailure(f"the variant has no {ENGINE_FILE}")
        super().__init__(spec, files, memory_bytes=2 * engine_path.stat().st_size)
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise RuntimeFailure("TensorRT cannot deserialize the engine (another TensorRT version or GPU?)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]

    def run_graph(self, feeds: Feeds) -> Feeds:
        torch = self._torch
        held = []
        for name in self._inputs:
            t = torch.from_numpy(feeds[name]).cuda().contiguous()
            held.append(t)
            self._context.set_input_shape(name, tuple(t.shape))
            self._context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            t = torch.empty(shape, dtype=torch.float32, device="cuda")
            outs[name] = t
            self._context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeFailure("TensorRT failed to run the engine")
        stream.synchronize()
        return {k: v.cpu().numpy() for k, v in outs.items()}


async def load_files(files: dict[str, Path], settings: LoadSettings) -> Runtime:
    _modules()
    try:
        spec = read_graph_spec(files)
    except ValueError as exc:
        raise RuntimeFailure(str(exc)) from None
    return await asyncio.to_thread(TensorRTRuntime, spec, files)


async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> Runtime:
    return await load_files(files.files, settings)
