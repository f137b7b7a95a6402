"""The adaptive thread count (ffruntime.llamacpp.threads) and prefill pacing (ffruntime.llamacpp.pacing):
the rules on measured step times, then the engine on the real SmolLM2 choosing and reporting them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffruntime.cpuload import CpuLoad, busy_seconds
from ffruntime.llamacpp.pacing import FIRST_CHUNK, PROMPT_STEP, SIZES, STALE, Gaps, Prefill
from ffruntime.llamacpp.threads import COLLAPSE, HOLD_MOST, Threads, free_cores, most_threads
from ffruntime.runtime import GenerationRequest
from ffruntime.settings import LoadSettings, available_cores
from tests.ffruntime.llamacpp.test_engine import open_runtime, run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_most_threads_and_free_cores() -> None:
    assert most_threads(LoadSettings()) == available_cores()
    assert most_threads(LoadSettings(threads=3)) == 3
    assert most_threads(LoadSettings(threads=1, threads_batch=2)) == 2
    assert free_cores(2, (0.0, 0.0), 1) == 2 and free_cores(2, (0.05, 0.1), 2) == 2  # idle: every core
    assert free_cores(2, (1.0, 1.0), 2) == 1 and free_cores(2, (0.4, 0.5), 2) == 1  # busy (a share of one)
    assert free_cores(2, (0.2, 0.2), 1) == 1 and free_cores(2, (0.2, 0.2), 2) == 2  # between the slacks
    assert free_cores(2, (0.0, 0.9), 1) == 1  # idle for one sample only: maybe between two bursts
    assert free_cores(2, (0.0, 0.1), 1) == 2  # a neighbour that stopped: back within the window
    assert free_cores(2, (0.9, 0.1), 2) == 2  # one busy sample alone takes no thread away
    assert free_cores(16, (3.0, 3.0), 16) == 13 and free_cores(2, (5.0, 5.0), 2) <= 0


class Load:
    def __init__(self, others: float | None) -> None:
        self.others = others

    def __call__(self) -> tuple[float, float] | None:
        return None if self.others is None else (self.others, self.others)


def step(t: Threads, clock: Clock, seconds_by_threads: dict[int, float], n_tokens: int = 1) -> int:
    """One step as the engine runs it: choose, 'decode' in the given time, record."""
    threads = t.choose()
    t.record(threads, "text", n_tokens, seconds_by_threads[threads])
    clock.now += seconds_by_threads[threads]
    return threads


def test_an_idle_machine_gets_every_core_from_the_first_step_and_a_busy_core_takes_one_away() -> None:
    clock, load = Clock(), Load(0.02)
    t = Threads(2, clock=clock, others=load, cores=2)
    assert t.current == 2
    assert [step(t, clock, {2: 0.010, 1: 0.016}) for _ in range(10)] == [2] * 10
    load.others = 0.9  # another process is busy: one thread at the next step
    assert step(t, clock, {2: 0.5, 1: 0.017}) == 1 and t.switches == 1
    load.others = 1.0
    assert all(step(t, clock, {2: 0.5, 1: 0.017}) == 1 for _ in range(100))
    load.others = 0.0  # it ended
    assert step(t, clock, {2: 0.010, 1: 0.016}) == 2
    assert Threads(2, clock=clock, others=Load(1.0), cores=2).current == 1  # crowded from the start
    assert Threads(1, clock=clock, others=Load(0.0), cores=2).choose() == 1  # FF_NUM_THREADS=1
    assert Threads(4, clock=clock, others=Load(0.0), cores=2).choose() == 2  # never more than the cores


def test_a_collapse_the_load_cannot_explain_caps_the_count_for_a_doubling_hold() -> None:
    clock = Clock()
    t = Threads(2, clock=clock, others=Load(0.0), cores=2)  # e.g. a neighbour the machine cannot see
    for _ in range(50):
        step(t, clock, {2: 0.010, 1: 0.016})
    contended = {2: 0.010 * COLLAPSE * 10, 1: 0.017}
    used = [step(t, clock, contended) for _ in range(3)]
    assert used == [2, 2, 1] and t.collapses == 1
    start, steps = clock.now, 0
    while clock.now - start < 120:  # the neighbour stays: each hold ends in two collapsing steps
        step(t, clock, contended)
        steps += 1
    assert steps / (clock.now - start) >= 0.9 / contended[1]
    assert t._hold == HOLD_MOST
    clock.now += HOLD_MOST  # it went away
    assert step(t, clock, {2: 0.010, 1: 0.016}) == 2
    assert t.mean("text", 1) is not None and t.mean("text", 300) is None


def test_cpu_load_sees_a_busy_process() -> None:
    load = CpuLoad()
    assert load.ok and 1 <= len(load.cpus) == available_cores()
    spin = "import time\nt = time.time()\nwhile time.time() - t < 2: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(1.0)
        others, readings = load.others(), load.readings()
    finally:
        busy.wait()
    assert others is not None and others >= 0.5
    assert readings is not None and min(readings) >= 0.3  # the last sample and the window both see it
    stat = "cpu  9 9 9 9\ncpu0 100 0 100 50 0 0 0 0\ncpu1 7 0 0 0\n"
    assert busy_seconds({0}, stat) == 200 / os.sysconf("SC_CLK_TCK")  # user + system of cpu0 only


def test_a_reader_that_asks_often_samples_itself_and_the_thread_stands_back() -> None:
    load = CpuLoad()
    assert load.thread is not None
    stat = f"/proc/self/task/{load.thread.native_id}/schedstat"

    def wakeups() -> int:  # the sampler thread's times on a core
        with open(stat) as f:
            return int(f.read().split()[2])

    time.sleep(2 * load.period)  # a reading needs two samples
    t0, before = time.monotonic(), wakeups()
    while time.monotonic() - t0 < 1.0:  # an engine stepping every 5 ms
        assert load.readings() is not None
        assert time.monotonic() - load._samples[-1][0] < load.period + 0.02  # always fresh
        time.sleep(0.005)
    assert wakeups() - before <= 15  # every CHECK (5 a second), not every PERIOD (40)


def test_a_prompt_only_step_takes_the_biggest_chunk_measured_within_one_decode_step() -> None:
    # A fake machine shaped like SmolLM2 Q4_1 on 2 threads (docs/benchmarks.md): far from linear at
    # small sizes, so a straight line through two averages would mislead.
    cost = {1: 0.012, 2: 0.016, 3: 0.019, 4: 0.021, 6: 0.034, 8: 0.045, 12: 0.060, 16: 0.075}

    def seconds(n: int) -> float:
        return cost.get(n, 0.005 * n)

    p = Prefill(512)
    assert p.budget(3, 2) == FIRST_CHUNK  # nothing measured yet
    decode = 0.0215  # 3 sequences generating: their decode-only step
    chosen = []
    for _ in range(12):
        p.record(decode, 3, False, 2)
        n = p.budget(3, 2)
        chosen.append(n)
        p.record(seconds(n), n, True, 2)
    # 4 fits (21 ms), 6 would not (34 ms): the chunk settles at 4 and never tries beyond 6
    assert chosen[-6:] == [4] * 6 and max(chosen) <= 6
    assert all(seconds(n) <= PROMPT_STEP * decode for n in chosen[-6:])
    # the decode step gets slower (longer contexts): the chunk follows it up, one size at a time
    for _ in range(30):
        p.record(0.050, 3, False, 2)
        n = p.budget(3, 2)
        p.record(seconds(n), n, True, 2)
    assert n == 8 and seconds(n) <= 0.050 < seconds(12)
    # a step that collapsed (another process took a core) is not folded into the size's average
    p.record(0.9, 8, True, 2)
    assert p.measured(8, 2) == pytest.approx(0.045) and p.budget(3, 2) == 8
    # costs are per thread count: on 1 thread, nothing measured yet
    assert p.measured(8, 1) is None and p.budget(3, 1) == FIRST_CHUNK
    # a size measured over the room steps down, to one token at least (progress)
    p.record(0.010, 1, False, 1)
    for _ in range(6):
        n = p.budget(1, 1)
        p.record(seconds(n) * 2, n, True, 1)
    assert n == 1 == SIZES[0]
    # a prompt's last piece (not a chunk size) is not recorded; a stale average is forgotten
    p.record(0.5, 5, True, 2)
    assert p.measured(5, 2) is None
    for _ in range(STALE + 1):
        p.record(0.012, 1, True, 1)
    assert p.measured(8, 2) is None
    capped = Prefill(512, most=3)  # an operator's prefill_chunk caps it
    assert capped.sizes == (1, 2, 3) and capped.budget(3, 2) == 3


def test_gaps_percentiles() -> None:
    g = Gaps()
    assert g.percentiles() == (0.0, 0.0)
    for i in range(100):
        g.add(0.01 if i < 98 else 0.5)
    p50, p99 = g.percentiles()
    assert p50 == 0.01 and p99 > 0.1


def test_automatic_slots_follow_the_memory_budget(tmp_path: Path, smollm2_gguf: Path) -> None:
    rt = open_runtime(tmp_path / "a", smollm2_gguf, num_parallel=0, num_ctx=256, memory_budget=8 * 2**30)
    try:
        assert rt.parallel == 8 and len(rt.engine.slots) == 8
        assert rt.memory_bytes > open_runtime_memory(rt, 1)
    finally:
        asyncio.run(rt.close())
    small = open_runtime(tmp_path / "b", smollm2_gguf, num_parallel=0, num_ctx=256, memory_budget=2**20)
    try:
        assert small.parallel == 1
    finally:
        asyncio.run(small.close())


def open_runtime_memory(rt: object, slots: int) -> int:
    from ffruntime.llamacpp.runtime import LlamaCppRuntime, estimate_memory

    assert isinstance(rt, LlamaCppRuntime)
    return estimate_memory(rt.files, rt.llama.meta, rt.settings.with_(num_parallel=slots))


def test_the_engine_reports_threads_and_inter_token_latency(tmp_path: Path, smollm2_gguf: Path) -> None:
    rt = open_runtime(tmp_path, smollm2_gguf, num_parallel=4, num_ctx=2048)
    try:
        async def both() -> list[object]:
            short = [run(rt, GenerationRequest(prompt=f"Story {i}: once upon a time", raw=True,
                                               options={"temperature": 0, "num_predict": 12}))
                     for i in range(3)]
            long = GenerationRequest(prompt="Rule: be brief. " * 30, raw=True, options={"num_predict": 2})
            return list(await asyncio.gather(*short, run(rt, long)))

        alone = asyncio.run(run(rt, GenerationRequest(prompt="Story 0: once upon a time", raw=True,
                                                      options={"temperature": 0, "num_predict": 12})))
        results = asyncio.run(both())
        assert [t.text for t in results[0][0]] == [t.text for t in alone[0]]  # type: ignore[index]
        stats = rt.stats()
        assert 1 <= stats["threads"] <= available_cores()
        assert 0 < stats["itl_p50_seconds"] <= stats["itl_p99_seconds"]
        assert rt.engine.prefill.decode_step(3, rt.engine.threads.current) is not None  # steps measured
    finally:
        asyncio.run(rt.close())


def test_under_a_cpu_quota_the_node_wide_reading_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod limited to 2 CPUs may run on 8 cores: neighbours busy on the other 6 are not contention for
    its quota, so the reading is left out (the collapse net alone decides) instead of leaving 1 thread."""
    from ffruntime import cpuload

    monkeypatch.setattr(cpuload, "cores", lambda: set(range(8)))
    assert Threads(2, cores=2)._others is None
    assert Threads(2, cores=2).choose() == 2
