"""The adaptive thread count (ffruntime.llamacpp.threads) and prefill pacing (ffruntime.llamacpp.pacing):
the rules on measured step times, then the engine on the real SmolLM2 choosing and reporting them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ffruntime.llamacpp.pacing import FIRST_CHUNK, ITL_FACTOR, MIN_CHUNK, Gaps, Prefill
from ffruntime.llamacpp.threads import COLLAPSE, PROBE_FIRST, PROBE_MOST, Threads, ladder, most_threads
from ffruntime.runtime import GenerationRequest
from ffruntime.settings import LoadSettings, available_cores
from tests.ffruntime.llamacpp.test_engine import open_runtime, run


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_ladder_halves_down_to_one_thread() -> None:
    assert ladder(2) == [2, 1] and ladder(8) == [8, 4, 2, 1] and ladder(1) == [1] and ladder(6) == [6, 3, 1]
    assert most_threads(LoadSettings()) == available_cores()
    assert most_threads(LoadSettings(threads=3)) == 3
    assert most_threads(LoadSettings(threads=1, threads_batch=2)) == 2


def step(t: Threads, clock: Clock, seconds_by_threads: dict[int, float], n_tokens: int = 1) -> int:
    """One step as the engine runs it: choose, 'decode' in the given time, record."""
    idx = t._choose(("text", n_tokens.bit_length()))
    threads = t.rungs[idx].threads
    t.record(idx, "text", n_tokens, seconds_by_threads[threads])
    clock.now += seconds_by_threads[threads]
    return threads


def test_an_idle_machine_gets_every_core_within_a_second_and_probes_ever_more_rarely() -> None:
    clock = Clock()
    t = Threads(2, clock=clock)
    assert t.current == 1  # the side that cannot collapse first
    idle = {2: 0.010, 1: 0.016}
    used = [step(t, clock, idle) for _ in range(3000)]
    assert t.current == 2 and t.switches == 1
    assert used.index(2) <= PROBE_FIRST / 0.016 + 1
    assert used.count(1) - used.index(2) <= 8  # probes of one thread lost, each wait doubled up to PROBE_MOST
    assert t.rungs[1].wait == PROBE_MOST


def test_a_contended_machine_falls_back_within_two_steps_and_stays_near_one_threads_rate() -> None:
    clock = Clock()
    t = Threads(2, clock=clock)
    for _ in range(50):
        step(t, clock, {2: 0.010, 1: 0.016})
    contended = {2: 0.010 * COLLAPSE * 10, 1: 0.017}  # spinning threads collapse beside a busy process
    used = [step(t, clock, contended) for _ in range(3)]
    assert used.count(2) == 2 and t.current == 1  # two collapsing steps (a probe of 1 may come between)
    start, steps = clock.now, 0
    while clock.now - start < 120:
        step(t, clock, contended)
        steps += 1
    one_thread_rate = 1 / contended[1]
    assert steps / (clock.now - start) >= 0.9 * one_thread_rate
    assert t.current == 1
    # the cores are free again: a probe of two threads wins within PROBE_MOST seconds
    start = clock.now
    while t.current == 1:
        step(t, clock, {2: 0.010, 1: 0.016})
    assert clock.now - start <= PROBE_MOST + 1


def test_probes_are_judged_against_the_same_batch_size() -> None:
    clock = Clock()
    t = Threads(2, clock=clock)
    for _ in range(100):
        step(t, clock, {2: 0.010, 1: 0.016}, n_tokens=1)
    clock.now += PROBE_FIRST * 64
    assert t.current == 2
    # no two-thread figure for a big batch: no probe on it (it could not be judged)
    assert t._choose(("text", (300).bit_length())) == t.at
    t.record(1, "text", 300, 0.05)  # a probe measured anyway only measures
    assert t.current == 2 and t.mean("text", 300, threads=1) == 0.05
    assert t.mean("text", 300) is None


def test_prefill_budget_keeps_a_mixed_step_within_the_itl_factor() -> None:
    p = Prefill(512)
    assert p.budget(0.01) == FIRST_CHUNK  # nothing measured yet: a small first chunk
    p.record(0.010 + 64 * 0.0005, 64, 0.010)  # 64 prompt tokens beside a 10 ms decode: 0.5 ms each
    assert p.per_token is not None and abs(p.per_token - 0.0005) < 1e-9
    budget = p.budget(0.010)
    assert budget == int((ITL_FACTOR - 1) * 0.010 / 0.0005)
    assert p.budget(1e-6) == MIN_CHUNK and p.budget(10.0) == 512
    capped = Prefill(512, most=48)  # an operator's prefill_chunk caps it
    capped.record(0.02, 64, 0.01)
    assert capped.budget(10.0) == 48


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
        assert stats["threads"] in ladder(available_cores())
        assert 0 < stats["itl_p50_seconds"] <= stats["itl_p99_seconds"]
        assert rt.engine.prefill.per_token is not None  # the long prompt's chunks were measured
    finally:
        asyncio.run(rt.close())
