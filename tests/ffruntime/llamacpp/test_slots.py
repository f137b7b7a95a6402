"""The engine's slot policy: a step's batch is in sequence id order and new sequences keep ids consecutive.

llama.cpp decodes a batch over per-sequence KV streams as one forward pass per run of consecutive,
increasing sequence ids (``split_equal``); measured on SmolLM2 Q4_1, 1 thread, 8 sequences: 80 ms a
step in id order, 104 ms in the order [3, 4, 0, 1, 2, 5, 7, 6] (docs/benchmarks.md).
"""

from __future__ import annotations

from ffruntime.llamacpp.engine import Engine, Job, _Seq
from ffruntime.llamacpp.pacing import FIRST_CHUNK
from ffruntime.llamacpp.slots import MIN_SHARED, Slot, id_runs, pick_slot
from ffruntime.llamacpp.text import TextStream
from ffruntime.llamacpp.threads import Threads
from ffruntime.runtime import CancelFlag


def test_id_runs() -> None:
    assert id_runs(set()) == 0
    assert id_runs({0, 1, 2}) == 1
    assert id_runs({0, 2, 3, 7}) == 3


def test_a_new_sequence_fills_the_hole_between_running_ones() -> None:
    free = [Slot(3, last_used=1.0), Slot(1, last_used=2.0), Slot(5, last_used=0.5)]
    assert pick_slot(free, {0, 2}, [1, 2, 3]).seq_id == 1  # {0, 1, 2}: one run
    assert pick_slot([Slot(6), Slot(7)], {0, 1}, [1]).seq_id in (6, 7)  # either starts a second run


def test_contiguity_beats_a_cached_prefix_which_decides_between_equals() -> None:
    prompt = list(range(100, 100 + MIN_SHARED + 4))
    cached = Slot(5, cached=prompt[: MIN_SHARED + 1])
    assert pick_slot([Slot(1), cached], {0, 2}, prompt).seq_id == 1  # the engine copies the prefix over
    beside = Slot(2, cached=prompt[: MIN_SHARED + 1])
    assert pick_slot([Slot(0), beside], {1}, prompt) is beside  # {0, 1} and {1, 2}: one run each
    short = Slot(2, cached=prompt[: MIN_SHARED - 1])  # too short to matter: the least recently used
    assert pick_slot([Slot(0, last_used=1.0), short], {1}, prompt).seq_id == 2


def _active(
    engine: Engine, sid: int, prompt_len: int, n_past: int, arrived: int = 0, t_first: int = 0
) -> _Seq:
    """A sequence of ``engine`` in slot ``sid``, ``n_past`` of its ``prompt_len`` tokens read."""
    job = Job(list(range(prompt_len)), None, [], 10, 100, lambda _: None, CancelFlag())  # type: ignore[arg-type]
    seq = _Seq(job, list(job.prompt), TextStream([]), sid, n_past=n_past, t_start=arrived, t_first=t_first)
    seq.slot = engine.slots[sid]
    engine.slots[sid].seq = seq
    engine._active.append(seq)
    return seq


def test_the_batch_is_in_sequence_id_order() -> None:
    engine = Engine(None, None, n_slots=4, n_batch=64, prefill_chunk=8, threads=Threads(1),  # type: ignore[arg-type]
                    name="plan")
    try:
        for sid, (prompt_len, n_past) in zip((2, 0, 3, 1), ((5, 4), (30, 0), (6, 5), (12, 3)), strict=True):
            _active(engine, sid, prompt_len, n_past)
        entries = engine._plan()  # while some generate: a decode-only step first …
        assert [(e[0].slot.seq_id, e[1]) for e in entries if e[0].slot] == [(2, 1), (3, 1)]
        # logits only where a sequence's last token is decoded, at its index in the batch
        assert [e[2] for e in entries] == [0, 1]
        # … then a prompt-only step: one chunk of one prompt, nothing measured yet: the first size
        first = min(FIRST_CHUNK, 8)
        assert [(e[0].slot.seq_id, e[1], e[2]) for e in engine._plan() if e[0].slot] == [(0, first, -1)]
        assert [e[0].slot.seq_id for e in engine._plan() if e[0].slot] == [2, 3]  # and so on
        for seq in [s for s in engine._active if len(s.tokens) - s.n_past == 1]:
            engine._active.remove(seq)
        entries = engine._plan()  # nobody generating: prompts are read a whole batch at a time
        assert [(e[0].slot.seq_id, e[1]) for e in entries if e[0].slot] == [(0, 29), (1, 8)]
    finally:
        engine._active.clear()
        engine.close()


def test_the_rest_of_a_burst_is_read_whole_and_a_later_prompt_is_paced() -> None:
    engine = Engine(None, None, n_slots=4, n_batch=64, prefill_chunk=64, threads=Threads(1),  # type: ignore[arg-type]
                    name="plan")
    try:
        _active(engine, 0, 20, 19, arrived=100, t_first=500)  # read in the first step: generating since 500
        _active(engine, 1, 20, 0, arrived=200)  # came while it was read
        _active(engine, 2, 16, 0, arrived=300)  # so did this one
        _active(engine, 3, 16, 0, arrived=600)  # came after its first token
        assert [(e[0].slot.seq_id, e[1]) for e in engine._plan() if e[0].slot] == [(0, 1)]  # decode
        # the prompt-only step: the burst's two prompts whole (up to their last token), the later one waits
        assert [(e[0].slot.seq_id, e[1]) for e in engine._plan() if e[0].slot] == [(1, 19), (2, 15)]
        engine._active[1].n_past, engine._active[2].n_past = 19, 15
        engine._plan()  # decode
        first = min(FIRST_CHUNK, 15)  # the later prompt is paced: nothing measured yet, the first size
        assert [(e[0].slot.seq_id, e[1]) for e in engine._plan() if e[0].slot] == [(3, first)]
        engine._active.clear()
        for s in engine.slots:
            s.seq = None
        _active(engine, 0, 20, 19, arrived=100, t_first=500)
        _active(engine, 1, 300, 0, arrived=200)  # of the burst, longer than the prompts read with it: paced
        engine._plan()
        assert [(e[0].slot.seq_id, e[1]) for e in engine._plan() if e[0].slot] == [(1, FIRST_CHUNK)]
    finally:
        engine._active.clear()
        engine.close()
