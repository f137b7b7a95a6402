"""How much CPU other processes use on this process's cores, measured (Linux ``/proc/stat``).

The busy time of the cores this process may run on (``sched_getaffinity``), from ``/proc/stat``'s per-core
lines, less this process's own CPU time (every thread of it, ``time.process_time``), over the last
:data:`WINDOW` seconds: how many cores the rest of the machine keeps busy. One daemon thread per process
samples every :data:`PERIOD` seconds (about 30 µs a sample), so a reading is fresh even after the process
was idle. Where ``/proc/stat`` cannot be read the reading is ``None`` (unknown).

While a reader asks often (the engine thread before every decode step), :meth:`CpuLoad.readings` takes
the sample itself when one is due and the thread only checks every :data:`CHECK` seconds: woken 40
times a second on a machine whose two cores run the decode, the thread cost ~230 µs of CPU a wake-up
(cold caches after each step streamed the weights), ~0.1 ms per token of a single stream, taken from
the decode's own threads (schedstat, docs/benchmarks.md, issue 22); a sample in the warm engine thread
costs ~20 µs every ``PERIOD``.
"""

from __future__ import annotations

import collections
import os
import threading
import time

PERIOD = 0.025  # seconds between samples
WINDOW = 0.1  # seconds the reading spans (the kernel counts busy time in ticks of 10 ms: 10 per core)
# 0.2 s before: the window still held a client's start-up burst (~0.4 core for a few tens of ms, when it
# opened a connection per request) 0.2 s after it ended, so each request of a single-stream benchmark
# decoded its first ~0.1-0.2 s on one thread: 8.8 % of its gaps over 18 ms against 4.1 % now and 2.8 %
# for llama-server (docs/benchmarks.md, issue 22).
CHECK = 0.2  # seconds between the sampler thread's looks while a reader takes the samples
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (guest time is inside user)


def cores() -> set[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def busy_seconds(cpus: set[int], text: str) -> float:
    """Busy seconds of ``cpus`` since boot from the text of ``/proc/stat``."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0
    for line in text.split("\n", (os.cpu_count() or 1) + 1)[1:-1]:  # the per-core lines follow "cpu "
        if not line.startswith("cpu"):
            break
        name, *fields = line.split()
        if int(name[3:]) in cpus:
            total += sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields))
    return total / tick


class CpuLoad:
    """The sampler: :meth:`others` is the cores other processes kept busy over the last window."""

    def __init__(self, path: str = "/proc/stat", period: float = PERIOD, window: float = WINDOW) -> None:
        self.path, self.period = path, period
        self.cpus = cores()
        keep = max(2, round(window / period) + 1)
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._reading: tuple[float, float] | None = None
        self._asked = 0.0  # when :meth:`readings` was last called
        self.ok = self._sample()
        self.thread: threading.Thread | None = None  # the sampler (none where /proc/stat is unreadable)
        if self.ok:
            self.thread = threading.Thread(target=self._run, name="ff-cpuload", daemon=True)
            self.thread.start()

    def _sample(self) -> bool:
        try:
            with open(self.path, encoding="ascii") as f:
                busy = busy_seconds(self.cpus, f.read())
        except (OSError, ValueError):
            return False
        with self._lock:
            self._samples.append((time.monotonic(), busy, time.process_time()))
        return True

    def _last(self) -> float:
        with self._lock:
            return self._samples[-1][0] if self._samples else 0.0

    def _run(self) -> None:
        while True:
            if time.monotonic() - self._asked < 2 * self.period:  # a reader asks often: it samples
                time.sleep(CHECK)
            elif self._sample():
                time.sleep(self.period)
            else:
                return

    def others(self, span: float = WINDOW) -> float | None:
        """Cores busy with other processes over the last ``span`` seconds (at least one sample period;
        ``None``: not measurable here)."""
        with self._lock:
            samples = list(self._samples)
        if len(samples) < 2:
            return None
        t1, b1, own1 = samples[-1]
        t0, b0, own0 = next((s for s in samples[:-1] if t1 - s[0] <= span + self.period / 2), samples[-2])
        if t1 - t0 <= 0:
            return None
        return max(0.0, ((b1 - b0) - (own1 - own0)) / (t1 - t0))

    def readings(self) -> tuple[float, float] | None:
        """(the last sample period, the whole window): :meth:`others` over both (computed once a sample;
        the sample is taken here when one is due)."""
        self._asked = now = time.monotonic()
        if self.ok and now - self._last() >= self.period:
            self._sample()
        last = self._samples[-1][0] if self._samples else None
        if last != self._read_at:
            recent, window = self.others(self.period), self.others()
            self._reading = None if recent is None or window is None else (recent, window)
            self._read_at = last
        return self._reading


_shared: CpuLoad | None = None
_shared_lock = threading.Lock()


def shared() -> CpuLoad:
    """The process's one sampler (started on first use)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = CpuLoad()
        return _shared
