"""One settings type for loading a variant, shared by the verify stage, ``ff run`` and ``ff serve``.

What verify measures is what is served only if both load with the same settings; so the defaults
(threads above all) are decided here, once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ffruntime import cgroup

DEFAULT_NUM_CTX = 2048  # tokens per sequence when neither the user nor the model says
AUTO_PARALLEL = 8  # sequence slots of the automatic choice (num_parallel 0) where memory allows
LOAD_OVERHEAD = 256 * 1024 * 1024  # compute buffers and the rest of a load, beside weights and KV


def context_length(given: int | None, params: Mapping[str, object]) -> int:
    """The context (tokens per sequence) a text model is loaded with, one rule for ff run and ff serve.

    As in Ollama: the user's own setting (``given``: ``ff serve --num-ctx`` / ``FF_NUM_CTX``) wins, then
    the model's ``PARAMETER num_ctx`` (``params``, the artifact's ``params.json``), then
    :data:`DEFAULT_NUM_CTX`. A request's ``num_ctx`` option is the request's own context, bounded by this
    one. A ``num_ctx`` PARAMETER that is not a positive whole number is a :class:`ValueError`.
    """
    if given is not None:
        return given
    value = params.get("num_ctx")
    if value is None:
        return DEFAULT_NUM_CTX
    n = int(value) if isinstance(value, int) and not isinstance(value, bool) else 0
    if isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    if n < 1:
        raise ValueError(f"PARAMETER num_ctx {value!r} is not a positive whole number")
    return n


def available_memory() -> int:
    """Bytes this process can take without swapping or being OOM-killed: ``MemAvailable``, or less where
    its cgroup's memory limit leaves less (a container's; :func:`ffruntime.cgroup.memory_room`); 0 when
    unknown."""
    machine = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    machine = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    room = cgroup.memory_room()
    if room is None:
        return machine
    return min(machine, room) if machine > 0 else room


def parallel_slots(weights: int, kv_per_slot: int, budget: int) -> int:
    """Sequence slots of a text model loaded with ``num_parallel`` 0 (automatic): :data:`AUTO_PARALLEL`
    where the KV cache of each fits in half of what ``budget`` (bytes; 0: unknown) leaves beside the
    weights, fewer where it does not, at least 1. llama-server's automatic choice is 4 slots; 8 cost only
    memory here (a slot's KV stream is its own, and an idle slot costs no compute) and let 8 streams
    share every step instead of queueing behind 4 (docs/serving.md)."""
    if budget <= 0 or kv_per_slot <= 0:
        return AUTO_PARALLEL
    room = (budget - weights - LOAD_OVERHEAD) // 2
    return max(1, min(AUTO_PARALLEL, room // kv_per_slot))


def available_cores() -> int:
    """Cores this process may use: those it may run on (``sched_getaffinity``), at most its cgroup's CPU
    quota rounded down (a container's limit, :func:`ffruntime.cgroup.cpu_limit`; at least 1): threads
    beyond the quota wait for the next period at every barrier of a llama.cpp step."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup.cpu_limit()
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def default_threads() -> int:
    """One compute thread per core but one, which is left to the caller's own Python work.

    On 2 cores, 1 thread decoded 2× faster than 2 sleeping threads at one stream, and 10× faster than 2
    spinning ones once another process ran; 2 spinning threads are 1.6× faster only on an otherwise idle
    machine (docs/serving.md, "Threads and OMP_WAIT_POLICY").
    """
    return max(1, available_cores() - 1)


@dataclass(frozen=True)
class MediaLimits:
    """Bounds on the images and audio clips of one request (hostile input; ``FF_MAX_IMAGE_BYTES`` …,
    docs/serving.md). Bytes are checked before parsing, pixels from the header before decoding, audio
    length from the header or by stopping the decode."""

    image_bytes: int = 20 << 20
    image_pixels: int = 4096 * 4096
    audio_bytes: int = 25 << 20
    audio_seconds: float = 1800.0
    request_bytes: int = 64 << 20
    request_pixels: int = 4 * 4096 * 4096
    request_items: int = 16


@dataclass(frozen=True)
class LoadSettings:
    """How to load one variant.

    - ``threads``: compute threads (0: :func:`default_threads`).
    - ``threads_batch``: llama.cpp's threads for batches of more than one token (0: ``threads``); the
      verify stage reads its text on every core, as nothing else runs beside a build.
    - ``lanes``: graph backends that can run several batches at once on the CPU (ONNX Runtime) cut a
      batch into this many pieces run side by side, each on ``threads / lanes`` threads (0: one lane
      per thread, and when ``threads`` is 0 too, one per core: a lane's single thread never waits at
      a barrier, so the llama.cpp reason to leave a core free does not hold; docs/serving.md).
    - ``num_ctx``: context length per sequence (text models); :func:`context_length` decides it.
    - ``num_parallel``: sequences the runtime runs at once (the scheduler reads it back from the runtime);
      0: the runtime chooses (llama.cpp: :func:`parallel_slots`; others: 1).
    - ``memory_budget``: bytes this load may use (0: :func:`available_memory`), for the automatic slots.
    - ``device``: ``cpu``, ``cuda``, ``cuda:1`` … (the variant's device unless told otherwise).
    - ``extra_buffers``: llama.cpp's extra CPU buffer types (repack/AMX); ``None`` decides per library
      (:func:`ffruntime.llamacpp.library.extra_buffers_safe`).
    - ``flash_attn``: llama.cpp flash attention; ``None``: llama.cpp decides (on where the device has it,
      as llama-server's default; on the CPU it keeps V untransposed, so writing the KV cache and attending
      over it cost less: docs/serving.md, "Why ff was slower than llama-server").
    - ``options``: backend options from the variant's ``TARGET … key=value`` and the operator.
    - ``media``: the bounds on a request's images and audio (:class:`MediaLimits`).
    """

    threads: int = 0
    threads_batch: int = 0
    lanes: int = 0
    num_ctx: int = DEFAULT_NUM_CTX
    num_parallel: int = 1
    memory_budget: int = 0
    device: str = "cpu"
    extra_buffers: bool | None = None
    flash_attn: bool | None = None
    options: Mapping[str, str] = field(default_factory=dict)
    media: MediaLimits = field(default_factory=MediaLimits)

    @property
    def n_threads(self) -> int:
        return self.threads if self.threads > 0 else default_threads()

    @property
    def n_lanes(self) -> int:
        if self.lanes > 0:
            return self.lanes
        return self.threads if self.threads > 0 else available_cores()

    @property
    def n_lane_threads(self) -> int:
        """Threads of each lane: ``threads`` shared out (one each when ``threads`` is 0)."""
        return max(1, self.threads // self.n_lanes) if self.threads > 0 else 1

    @property
    def n_threads_batch(self) -> int:
        return self.threads_batch if self.threads_batch > 0 else self.n_threads

    @classmethod
    def for_model(
        cls,
        params: Mapping[str, object],
        *,
        num_ctx: int | None = None,
        threads: int = 0,
        lanes: int = 0,
        num_parallel: int = 1,
        media: MediaLimits | None = None,
    ) -> LoadSettings:
        """How ``ff run`` and ``ff serve`` load a model with PARAMETERs ``params``, given the user's own
        settings (``None``/0: not given): the context by :func:`context_length`, threads and lanes as
        above. PARAMETERs other than ``num_ctx`` do not change how a model is loaded (docs/serving.md)."""
        return cls(
            threads=threads,
            lanes=lanes,
            num_ctx=context_length(num_ctx, params),
            num_parallel=num_parallel,
            media=media or MediaLimits(),
        )

    def with_(self, **changes: object) -> LoadSettings:
        return replace(self, **changes)  # type: ignore[arg-type]
