"""How many threads each ``llama_decode`` runs on: chosen step by step from measured step times.

A fixed thread count loses one way or the other on a machine whose cores are shared (docs/serving.md,
"Threads that adapt"): llama.cpp's OpenMP threads wait for each other at a barrier after every operation,
so N threads on N cores are the fastest while nothing else runs and collapse (10-40× slower) as soon as
another process takes one core, while one thread (no barrier at all: ggml runs a one-thread graph on the
calling thread, outside OpenMP) never collapses. What can change while the process runs is the thread
count of the next decode (``llama_set_n_threads``); libgomp reads its wait policy once, at start, and ff
leaves it at libgomp's default (spin a while, then sleep), as llama-server does.

:class:`Threads` keeps a ladder of thread counts (all cores, half of them, …, 1) and, per count and per
batch size class (powers of two of the batch's tokens), a moving average of the decode time. It starts on
one thread (the side that cannot collapse: on a machine already crowded, a first prompt read on spinning
threads took minutes). Each step runs on the current rung, except that

- now and then (every :data:`PROBE_FIRST` seconds, doubling up to :data:`PROBE_MOST` while the probes
  lose, longer when a lost probe took so long that probing that often would cost more than
  :data:`PROBE_SHARE` of the time) one step runs on a neighbouring rung, if the current rung has an
  average for its batch size class to judge it by, and, for more threads, if the batch is a decode
  step (at most :data:`PROBE_UP_TOKENS` tokens: on a crowded machine spinning threads took 9 s for a
  3-sequence step that one thread decoded in 0.5 s, and 59 s for a prompt chunk); a probe faster than
  that average by :data:`MARGIN` makes that rung current;
- two steps in a row :data:`COLLAPSE` times slower than the current rung's average drop one rung at once
  (the cores are shared now), and the rung above is probed again soon.

So an idle machine decodes on every core and a contended one falls back within two steps; probes of a
collapsing rung cost at most about :data:`PROBE_SHARE` of the time. One object serves every
context of one engine thread (generation, embeddings) and the verify stage's evaluator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ffruntime.settings import LoadSettings, available_cores

ALPHA = 0.2  # weight of a new step time in the moving average
MARGIN = 0.1  # a probe must be this much faster to move
COLLAPSE = 3.0  # a step this many times slower than the average counts as collapsing
PROBE_FIRST = 0.5  # seconds before a neighbour is probed again after it won or was left
PROBE_MOST = 16.0  # the longest wait between probes of a neighbour that keeps losing …
PROBE_SHARE = 0.05  # … unless its probes are so slow that they would take more than this share of the time
PROBE_UP_TOKENS = 16  # more threads are probed on batches of at most this many tokens (decode steps)


def ladder(most: int) -> list[int]:
    """Thread counts to choose from, largest first: ``most``, half of it, …, 1."""
    out = [max(1, most)]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def size_class(n_tokens: int) -> int:
    """Batches of similar cost share a class: 1, 2–3, 4–7, 8–15 … tokens."""
    return max(1, n_tokens).bit_length()


def most_threads(settings: LoadSettings) -> int:
    """The top of the ladder: the threads the settings give (``FF_NUM_THREADS``), else every core."""
    given = max(settings.threads, settings.threads_batch)
    return given if given > 0 else available_cores()


@dataclass
class _Rung:
    threads: int
    mean: dict[tuple[str, int], float] = field(default_factory=dict)  # (kind, size class) → seconds
    wait: float = PROBE_FIRST  # seconds between probes of this rung while it loses
    next_probe: float = 0.0  # monotonic seconds


class Threads:
    """The thread policy of one engine thread (not thread-safe: one thread calls :meth:`decode`)."""

    def __init__(self, most: int, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self.rungs = [_Rung(n) for n in ladder(most)]
        self.at = len(self.rungs) - 1  # index of the current rung: one thread first
        self.clock = clock
        self.switches = 0  # times the current rung changed
        self.probes = 0
        self._slow = 0  # consecutive collapsing steps on the current rung
        self._set: dict[int, int] = {}  # context address → threads it was last given
        now = clock()
        for rung in self.rungs:
            rung.next_probe = now + PROBE_FIRST

    @property
    def current(self) -> int:
        return self.rungs[self.at].threads

    def mean(self, kind: str, n_tokens: int, threads: int | None = None) -> float | None:
        """The average decode time of a ``kind`` batch of ``n_tokens`` on ``threads`` (default: current)."""
        rung = self.rungs[self.at] if threads is None else next(r for r in self.rungs if r.threads == threads)
        return rung.mean.get((kind, size_class(n_tokens)))

    def decode(self, lc: Any, ctx: Any, batch: Any, n_tokens: int, kind: str = "text") -> int:
        """``llama_decode(ctx, batch)`` on the thread count this step gets; its time is measured."""
        idx = self._choose((kind, size_class(n_tokens)), up=n_tokens <= PROBE_UP_TOKENS)
        threads = self.rungs[idx].threads
        key = int(ctx) if isinstance(ctx, int) else id(ctx)
        if self._set.get(key) != threads:
            lc.llama_set_n_threads(ctx, threads, threads)
            self._set[key] = threads
        t0 = time.perf_counter()
        rc = int(lc.llama_decode(ctx, batch))
        if rc == 0:
            self.record(idx, kind, n_tokens, time.perf_counter() - t0)
        return rc

    def forget(self, ctx: Any) -> None:
        """``ctx`` is freed (its address may be reused by a new context)."""
        self._set.pop(int(ctx) if isinstance(ctx, int) else id(ctx), None)

    # --- the rule -----------------------------------------------------------------------------------
    def _choose(self, key: tuple[str, int], up: bool = True) -> int:
        """The rung of the next step (``key``: its kind and size class; ``up``: more threads may be
        probed on it)."""
        if key not in self.rungs[self.at].mean:  # a probe could not be judged: no figure to compare with
            return self.at
        now = self.clock()
        for idx in (self.at + 1, self.at - 1) if up else (self.at + 1,):  # fewer threads first: the safe side
            if 0 <= idx < len(self.rungs) and now >= self.rungs[idx].next_probe:
                self.probes += 1
                return idx
        return self.at

    def record(self, idx: int, kind: str, n_tokens: int, seconds: float) -> None:
        """Fold one measured step (run on rung ``idx``) into the averages and move if it says so."""
        key = (kind, size_class(n_tokens))
        here = self.rungs[self.at].mean.get(key)
        rung = self.rungs[idx]
        if idx != self.at:  # a probe
            won = here is not None and seconds * (1 + MARGIN) < here
            old = rung.mean.get(key)
            rung.mean[key] = seconds if old is None else old + ALPHA * (seconds - old)
            if won:
                self._move(idx)
            else:
                if here is not None:  # lost (without a baseline to compare with, it only measured)
                    rung.wait = max(min(PROBE_MOST, rung.wait * 2), seconds / PROBE_SHARE)
                rung.next_probe = self.clock() + rung.wait
            return
        if here is not None and seconds > COLLAPSE * here:
            self._slow += 1
            if self._slow >= 2 and self.at + 1 < len(self.rungs):
                self._move(self.at + 1)
            return  # a collapsing step is not folded into the average it is judged against
        self._slow = 0
        rung.mean[key] = seconds if here is None else here + ALPHA * (seconds - here)

    def _move(self, idx: int) -> None:
        now = self.clock()
        self.at, self._slow = idx, 0
        self.switches += 1
        for i, rung in enumerate(self.rungs):
            if abs(i - idx) == 1:  # the new neighbours: probed again soon, from a clean start
                rung.wait = PROBE_FIRST
                rung.next_probe = now + PROBE_FIRST
