"""The ONNX Runtime backend: one ``InferenceSession`` over the variant's ``model.onnx``.

Chat models made by ONNX Runtime GenAI share the backend name; their variants hold a
``genai_config.json`` and are handed to :mod:`ffruntime.onnxruntime_genai`. Everything else is a
:class:`~ffruntime.graph_runtime.GraphRuntime`: embeddings, classifiers and plain tensor graphs,
batched across concurrent requests. On the CPU up to ``lanes`` pieces of a batch run in one session at
once (``InferenceSession.run`` may be called from several threads), each on ``threads / lanes``
threads: by default one lane of one thread per core (:mod:`ffruntime.graph_runtime`). ``TARGET cuda``
uses the CUDA execution provider, which must be present (onnxruntime-gpu); it never falls back to the
CPU silently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.graph_runtime import Feeds, GraphRuntime
from ffruntime.graph_spec import GraphSpec, read_graph_spec
from ffruntime.runtime import Runtime
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef

if TYPE_CHECKING:
    import onnxruntime

MODEL_FILE = "model.onnx"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "rocm": "ROCMExecutionProvider"}


def session(model: Path, device: str, threads: int) -> onnxruntime.InferenceSession:
    """An InferenceSession for ``model`` on ``device`` with ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable.missing("onnxruntime", "onnx", "the onnxruntime backend") from None
    provider = PROVIDERS.get(device.split(":", 1)[0])
    if provider is None or provider not in ort.get_available_providers():
        raise BackendUnavailable(
            f"onnxruntime {ort.__version__} here has no execution provider for {device} "
            f"(it has {', '.join(ort.get_available_providers())}); "
            + ("install onnxruntime-gpu and the CUDA 12 runtime" if device.startswith("cuda") else "")
        )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads collapse when anything else wants the cores (the server's own event
    # loop, its clients; design.md §6 measured the same for llama.cpp): threads sleep between runs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(model), sess_options=opts, providers=[provider])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise RuntimeFailure(f"onnxruntime cannot load {model}: {exc}") from None


def string_feeds(feeds: Feeds) -> Feeds:
    """Feeds for ``InferenceSession.run``: BYTES (object) arrays as str arrays."""
    return {k: _strings(v) if v.dtype == object else v for k, v in feeds.items()}


def _strings(array: Any) -> Any:
    """BYTES elements → str: onnxruntime's string tensors take Python str (UTF-8)."""
    import numpy as np

    from ffruntime.runtime import RequestRejected

    try:
        text = [bytes(x).decode("utf-8") for x in array.reshape(-1)]
        return np.array(text, dtype=object).reshape(array.shape)
    except UnicodeDecodeError:
        raise RequestRejected("a BYTES input for an ONNX string tensor is not UTF-8") from None


class OnnxRuntime(GraphRuntime):
    def __init__(self, spec: GraphSpec, files: dict[str, Path], sess: Any, lanes: int = 1) -> None:
        size = sum(p.stat().st_size for p in files.values())
        super().__init__(spec, files, memory_bytes=2 * size, lanes=lanes)
        self._session = sess
        self._outputs = [o.name for o in sess.get_outputs()]

    def run_graph(self, feeds: Feeds) -> Feeds:
        try:
            values = self._session.run(self._outputs, string_feeds(feeds))
        except Exception as exc:  # a shape or value the graph refuses
            from ffruntime.runtime import RequestRejected

            raise RequestRejected(f"onnxruntime refused the inputs: {str(exc).splitlines()[0]}") from None
        return dict(zip(self._outputs, values, strict=True))


async def load_files(files: dict[str, Path], settings: LoadSettings) -> Runtime:
    """Load a variant from its layer filepath → path mapping, on ``settings.device``."""
    model = files.get(MODEL_FILE)
    if model is None:
        raise RuntimeFailure(f"the variant has no {MODEL_FILE} layer")
    try:
        spec = read_graph_spec(files)
    except ValueError as exc:
        raise RuntimeFailure(str(exc)) from None
    cpu = settings.device == "cpu"
    threads = settings.n_lane_threads if cpu else settings.n_threads
    sess = await asyncio.to_thread(session, model, settings.device, threads)
    return OnnxRuntime(spec, files, sess, settings.n_lanes if cpu else 1)


async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> Runtime:
    if "genai_config.json" in files.files:
        from ffruntime import onnxruntime_genai  # type: ignore[attr-defined,unused-ignore]

        genai: Runtime = await onnxruntime_genai.load(variant, files, settings)
        return genai
    device = settings.device if settings.device != "cpu" else variant.target
    return await load_files(files.files, settings.with_(device=device))
