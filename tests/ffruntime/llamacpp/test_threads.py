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
from ffruntime.llamacpp.pacing import FIRST_CHUNK, MIN_CHUNK, PROMPT_STEP, Gaps, Prefill
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
    assert free_cores(2, (0.0, 0.9), 1) == 2  # a neighbour that stopped: back within one sample
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
    assert wakeups() - before <= 15  # every WINDOW (5 a second), not every PERIOD (40)


def test_a_prompt_only_step_is_sized_from_a_fixed_pass_cost_and_a_per_token_cost() -> None:
    # A fake machine: a pass of n tokens costs 10 ms + 0.05 ms per token, on 2 threads.
    def seconds(n: int) -> float:
        return 0.010 + 0.00005 * n

    p = Prefill(512)
    decode = seconds(64)  # 64 sequences generating: their decode-only step
    assert p.cost(2) is None and p.budget(decode, 2) == FIRST_CHUNK  # nothing measured yet
    p.record(seconds(512), 512, True, 2)  # a whole-batch prompt step while nothing generated
    assert p.cost(2) is None  # no decode-only pass yet: the fixed cost is unknown
    p.record(decode, 64, False, 2)
    cost = p.cost(2)
    assert cost is not None and abs(cost[0] - 0.010) < 1e-9 and abs(cost[1] - 0.00005) < 1e-9
    fit = int((PROMPT_STEP * decode - 0.010) / 0.00005)  # the chunk whose step takes PROMPT_STEP decodes
    sizes = []
    for _ in range(6):  # from the first chunk it may only double each step, up to the fit
        n = p.budget(decode, 2)
        sizes.append(n)
        p.record(seconds(n), n, True, 2)
        p.record(decode, 64, False, 2)
    assert sizes[0] == 2 * FIRST_CHUNK < fit and all(abs(n - fit) <= 1 for n in sizes[1:])  # float noise
    assert seconds(fit) <= PROMPT_STEP * decode + 1e-12 < seconds(fit + 2)
    # the gap a generating sequence sees: one decode-only step and one prompt-only step
    assert (decode + seconds(fit)) / decode <= 1 + PROMPT_STEP + 1e-9
    # a pass whose fixed cost alone exceeds the target still reads a few tokens (progress)
    assert p.budget(0.001, 2) == MIN_CHUNK
    assert p.cost(1) is None  # costs are per thread count
    capped = Prefill(512, most=48)  # an operator's prefill_chunk caps it
    assert capped.budget(10.0, 2) == min(48, FIRST_CHUNK)


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
        assert rt.engine.prefill.cost(rt.engine.threads.current) is not None  # passes were measured
    finally:
        asyncio.run(rt.close())


def test_under_a_cpu_quota_the_node_wide_reading_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod limited to 2 CPUs may run on 8 cores: neighbours busy on the other 6 are not contention for
    its quota, so the reading is left out (the collapse net alone decides) instead of leaving 1 thread."""
    from ffruntime import cpuload

    monkeypatch.setattr(cpuload, "cores", lambda: set(range(8)))
    assert Threads(2, cores=2)._others is None
    assert Threads(2, cores=2).choose() == 2
