"""The Apache TVM backend: the variant's Relax libraries (one per shape bucket) on the TVM runtime.

A batch is padded to the smallest compiled bucket that holds it (batch × sequence; padded rows and
positions have a zero attention mask, so they change nothing in the real rows) and split over the
largest batch bucket when it is bigger. The parameters (``params.npz``) are loaded onto the device
once and shared by every bucket.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.graph_runtime import Feeds, GraphRuntime
from ffruntime.graph_spec import GraphSpec, read_graph_spec
from ffruntime.runtime import RequestRejected, Runtime
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef

PARAMS_FILE = "params.npz"


def _lib_name(batch: int, seq: int) -> str:
    return f"tvm-b{batch}-s{seq}.so"


def _device(tvm: Any, device: str) -> Any:
    kind = device.split(":", 1)[0]
    dev = {"cpu": tvm.cpu, "cuda": tvm.cuda, "vulkan": tvm.vulkan, "metal": tvm.metal, "rocm": tvm.rocm}[
        kind
    ](0)
    if not dev.exist:
        raise BackendUnavailable(f"TVM finds no {kind} device here; this variant needs one")
    return dev


class TVMRuntime(GraphRuntime):
    def __init__(self, spec: GraphSpec, files: dict[str, Path], device: str, threads: int) -> None:
        size = sum(p.stat().st_size for p in files.values())
        super().__init__(spec, files, memory_bytes=2 * size)
        import os

        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        import tvm
        from tvm import relax

        self._tvm = tvm
        self._dev = _device(tvm, device)
        if not spec.buckets:
            raise RuntimeFailure("the TVM variant lists no shape buckets")
        params_path = files.get(PARAMS_FILE)
        if params_path is None:
            raise RuntimeFailure(f"the TVM variant has no {PARAMS_FILE}")
        with np.load(params_path, allow_pickle=False) as data:
            self._params = [tvm.runtime.tensor(data[k], self._dev) for k in sorted(data.files)]
        self._vms: dict[tuple[int, int], Any] = {}
        # TVM tells a library by its (real) file name's suffix; store blobs have none, so each library
        # (small: the weights are in params.npz) is copied under its name.
        self._links = tempfile.TemporaryDirectory(prefix="ff-tvm-")
        for b, s in spec.buckets:
            lib = files.get(_lib_name(b, s))
            if lib is None:
                raise RuntimeFailure(f"the TVM variant has no library for bucket {b}×{s}")
            link = Path(self._links.name) / _lib_name(b, s)
            shutil.copyfile(lib, link)
            self._vms[(b, s)] = relax.VirtualMachine(tvm.runtime.load_module(str(link)), self._dev)
        self._max_batch = max(b for b, _ in spec.buckets)
        self._out = spec.outputs[0].name

    async def close(self) -> None:
        await super().close()
        self._vms.clear()
        self._links.cleanup()

    def _bucket(self, batch: int, seq: int) -> tuple[int, int]:
        fits = [(b, s) for b, s in self.spec.buckets if b >= batch and s >= seq]
        if not fits:
            raise RequestRejected(
                f"no compiled shape holds {batch}×{seq} tokens (buckets {self.spec.buckets})"
            )
        return min(fits, key=lambda bs: (bs[0] * bs[1], bs[1]))

    def run_graph(self, feeds: Feeds) -> Feeds:
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        parts = []
        for start in range(0, ids.shape[0], self._max_batch):
            chunk_ids, chunk_mask = (
                ids[start : start + self._max_batch],
                mask[start : start + self._max_batch],
            )
            n, seq = chunk_ids.shape
            b, s = self._bucket(n, seq)
            pi = np.zeros((b, s), dtype=np.int64)
            pm = np.zeros((b, s), dtype=np.int64)
            pi[:n, :seq], pm[:n, :seq] = chunk_ids, chunk_mask
            t = self._tvm.runtime.tensor
            out = self._vms[(b, s)]["main"](t(pi, self._dev), t(pm, self._dev), *self._params)
            parts.append(out.numpy()[:n])
        return {self._out: np.concatenate(parts)}


async def load_files(files: dict[str, Path], settings: LoadSettings) -> Runtime:
    try:
        import tvm  # noqa: F401
    except ImportError:
        raise BackendUnavailable.missing("tvm", "tvm", "the tvm backend") from None
    try:
        spec = read_graph_spec(files)
    except ValueError as exc:
        raise RuntimeFailure(str(exc)) from None
    try:
        return await asyncio.to_thread(TVMRuntime, spec, files, settings.device, settings.n_threads)
    except (BackendUnavailable, RuntimeFailure):
        raise
    except Exception as exc:  # TVM's own error types (a library built for another CPU, …)
        raise RuntimeFailure(f"TVM cannot load the variant: {type(exc).__name__}: {exc}") from None


async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> Runtime:
    device = settings.device if settings.device != "cpu" else variant.target
    return await load_files(files.files, settings.with_(device=device))
