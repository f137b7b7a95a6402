"""How many threads each ``llama_decode`` runs on: every free core, from the measured CPU use of the others.

A fixed thread count loses one way or the other on a machine whose cores are shared (docs/serving.md,
"Threads that adapt"): llama.cpp's OpenMP threads wait for each other at a barrier after every operation,
spinning a while first (libgomp's default, as llama-server runs), so N threads on N cores are the fastest
while nothing else runs and collapse (10-40× slower) as soon as another process takes one core, while one
thread (no barrier at all: ggml runs a one-thread graph on the calling thread) never collapses. What can
change while the process runs is the thread count of the next decode (``llama_set_n_threads``).

The rule: before each step, the cores other processes kept busy (:mod:`ffruntime.cpuload`:
``/proc/stat`` less this process's own CPU time, over the last 0.025 s sample and the last 0.1 s) decide
how many cores are free, and the step runs on that many threads (at least 1, at most the settings'
:func:`most_threads`):

- fewer as soon as both readings say the others use more than :data:`DOWN_SLACK` of a core beyond the
  free ones (a busy process sharing a core with a spinning thread still gets a third to a half of it,
  so it shows);
- more once both readings say they use less than :data:`UP_SLACK` (hysteresis against flapping: a
  neighbour working in bursts shows idle in one 0.025 s sample between two bursts, and taking the
  thread back then collapsed the next step, 250-400 ms instead of 20 ms, docs/benchmarks.md; so a
  neighbour that stopped gives its core back within the 0.1 s window).

So an idle machine decodes on every core from its first step and a crowded one starts on fewer. A safety
net for what the measurement cannot see (cores shared with other containers, the time left in a
cgroup's CPU quota, where the reading is not used at all): two steps
in a row :data:`COLLAPSE` times slower than the average of their batch size class on that thread count
cap the count one lower for :data:`HOLD_FIRST` seconds, doubling up to :data:`HOLD_MOST` while it keeps
happening. Where CPU use cannot be measured (no ``/proc/stat``) every core is used, under the same net.

One object serves every context of one engine thread (generation, embeddings) and the verify stage's
evaluator; its per-count averages also feed :mod:`ffruntime.llamacpp.pacing`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ffruntime.settings import LoadSettings, available_cores

ALPHA = 0.2  # weight of a new step time in the moving average
COLLAPSE = 3.0  # a step this many times slower than the average counts as collapsing
DOWN_SLACK = 0.3  # cores of other processes' use tolerated beyond the free ones before a thread goes
UP_SLACK = 0.15  # … and below which a thread comes back
HOLD_FIRST = 2.0  # seconds a collapse caps the thread count …
HOLD_MOST = 60.0  # … doubling up to this while collapses recur
RECUR = 30.0  # a collapse within this many seconds of the last cap's end counts as recurring


def size_class(n_tokens: int) -> int:
    """Batches of similar cost share a class: 1, 2–3, 4–7, 8–15 … tokens."""
    return max(1, n_tokens).bit_length()


def most_threads(settings: LoadSettings) -> int:
    """The most threads a decode may use: the threads the settings give (``FF_NUM_THREADS``), else every
    core."""
    given = max(settings.threads, settings.threads_batch)
    return given if given > 0 else available_cores()


def free_cores(cores: int, others: tuple[float, float], current: int) -> int:
    """Threads for the next step on ``cores`` cores of which other processes keep ``others`` busy (over
    the last sample period and over the window), from ``current`` threads: fewer when both readings are
    beyond :data:`DOWN_SLACK`, more when both are below :data:`UP_SLACK`."""
    recent, window = others
    down = cores - max(0, math.ceil(min(recent, window) - DOWN_SLACK))
    if down < current:
        return down
    return max(current, cores - max(0, math.ceil(max(recent, window) - UP_SLACK)))


class Threads:
    """The thread policy of one engine thread (not thread-safe: one thread calls :meth:`decode`)."""

    def __init__(
        self,
        most: int,
        *,
        clock: Callable[[], float] = time.perf_counter,
        others: Callable[[], tuple[float, float] | None] | None = None,
        cores: int | None = None,
    ) -> None:
        self.most = max(1, most)
        self.cores = cores if cores is not None else available_cores()
        if others is None and self.most > 1:
            from ffruntime.cpuload import cores as runnable
            from ffruntime.cpuload import shared

            # The readings count the busy time of every core the process may run on. Under a CPU quota
            # (a container's limit: fewer cores than that) neighbours busy on the node's other cores
            # do not compete for the quota, so the reading would wrongly leave one thread: the collapse
            # net alone decides there.
            if len(runnable()) <= self.cores:
                others = shared().readings
        self._others = others
        self.clock = clock
        self.current = self._free(self.most)
        self.switches = 0  # times the thread count changed
        self.collapses = 0
        self._mean: dict[tuple[int, str, int], float] = {}  # (threads, kind, size class) → seconds
        self._slow = 0  # consecutive collapsing steps
        self._cap, self._cap_until, self._hold = self.most, 0.0, HOLD_FIRST
        self._set: dict[int, int] = {}  # context address → threads it was last given

    def mean(self, kind: str, n_tokens: int, threads: int | None = None) -> float | None:
        """The average decode time of a ``kind`` batch of ``n_tokens`` on ``threads`` (default: current)."""
        return self._mean.get((self.current if threads is None else threads, kind, size_class(n_tokens)))

    def decode(self, lc: Any, ctx: Any, batch: Any, n_tokens: int, kind: str = "text",
               ready: Callable[[], None] | None = None) -> int:
        """``llama_decode(ctx, batch)`` on the thread count this step gets; its time is measured.
        ``ready`` runs last before the decode, once the choice (which may read ``/proc/stat`` and call
        llama.cpp, both releasing the GIL) is made: the engine posts the last step's tokens there, so
        the event loop it wakes cannot take the GIL before the decode releases it."""
        threads = self.choose()
        key = int(ctx) if isinstance(ctx, int) else id(ctx)
        if self._set.get(key) != threads:
            lc.llama_set_n_threads(ctx, threads, threads)
            self._set[key] = threads
        if ready is not None:
            ready()
        t0 = time.perf_counter()
        rc = int(lc.llama_decode(ctx, batch))
        if rc == 0:
            self.record(threads, kind, n_tokens, time.perf_counter() - t0)
        return rc

    def forget(self, ctx: Any) -> None:
        """``ctx`` is freed (its address may be reused by a new context)."""
        self._set.pop(int(ctx) if isinstance(ctx, int) else id(ctx), None)

    # --- the rule -----------------------------------------------------------------------------------
    def _free(self, current: int) -> int:
        others = self._others() if self._others is not None else None
        want = self.most if others is None else free_cores(self.cores, others, current)
        return max(1, min(want, self.most))

    def choose(self) -> int:
        """The thread count of the next step."""
        if self.most == 1:
            return 1
        now = self.clock()
        if self._cap < self.most and now >= self._cap_until:
            self._cap = self.most
        threads = min(self._free(self.current), self._cap)
        if threads != self.current:
            self.current, self._slow = threads, 0
            self.switches += 1
        return threads

    def record(self, threads: int, kind: str, n_tokens: int, seconds: float) -> None:
        """Fold one measured step (run on ``threads``) into its average; two collapsing steps in a row
        cap the thread count one lower for a while."""
        key = (threads, kind, size_class(n_tokens))
        mean = self._mean.get(key)
        if mean is not None and threads > 1 and seconds > COLLAPSE * mean:
            self._slow += 1
            if self._slow >= 2:
                self._collapsed(threads)
            return  # a collapsing step is not folded into the average it is judged against
        self._slow = 0
        self._mean[key] = seconds if mean is None else mean + ALPHA * (seconds - mean)

    def _collapsed(self, threads: int) -> None:
        now = self.clock()
        recurring = now < self._cap_until + RECUR
        self._hold = min(HOLD_MOST, self._hold * 2) if recurring and self.collapses else HOLD_FIRST
        self._cap, self._cap_until = max(1, threads - 1), now + self._hold
        self.collapses += 1
        self._slow = 0
