"""The engine's sequence slots and counters: which free slot a new sequence takes (prefix reuse, runs of
consecutive ids), and :class:`Stats`, what the server exports as metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

MIN_SHARED = 16  # shortest prefix worth copying from another slot's KV


class Occupant(Protocol):
    """What a slot reads of the sequence that owns it (the engine's running sequence)."""

    tokens: list[int]
    n_past: int  # tokens of ``tokens`` in the slot's KV


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # the KV's tokens while no sequence owns the slot
    seq: Occupant | None = None
    last_used: float = 0.0

    def kv_tokens(self) -> list[int]:
        return self.seq.tokens[: self.seq.n_past] if self.seq is not None else self.cached


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def id_runs(ids: set[int]) -> int:
    """Runs of consecutive integers in ``ids``: {0, 1, 3} has two."""
    return sum(1 for i in ids if i - 1 not in ids)


def pick_slot(free: list[Slot], busy: set[int], tokens: list[int]) -> Slot:
    """The free slot for a new sequence: the one that leaves the running sequences in the fewest runs of
    consecutive ids (llama.cpp decodes each run as its own forward pass, every step of the generation),
    then one whose own cached prefix is worth keeping, then the least recently used (its cache is the
    least likely to be wanted). A prefix cached in another slot is not lost: the engine copies it into the
    slot picked (``llama_memory_seq_cp``). Prefix first, as before, left 4 streams of a benchmark that
    had run 8 in 4 runs of one sequence each: 0.79× of llama-server instead of ≥ 1 (docs/benchmarks.md)."""

    def worth(s: Slot) -> tuple[int, int, float]:
        own = common_prefix(s.cached, tokens)
        return (-id_runs(busy | {s.seq_id}), own if own >= MIN_SHARED else 0, -s.last_used)

    return max(free, key=worth)


@dataclass
class Stats:
    """Counters since load (the server exports them as metrics)."""

    steps: int = 0  # llama_decode calls
    batch_tokens: int = 0  # tokens decoded, all steps
    batch_sequences: int = 0  # sequences in each step, summed
    last_batch_sequences: int = 0
    max_batch_sequences: int = 0
    prompt_tokens: int = 0  # prompt tokens decoded (not reused)
    prefix_hits: int = 0  # requests that reused a cached prefix
    prefix_tokens: int = 0  # prompt tokens reused instead of decoded
    deferred: int = 0  # sequences put back because the KV cache was full
    finished: int = 0
    embed_batches: int = 0
    embed_inputs: int = 0
    media_chunks: int = 0  # image/audio chunks decoded into sequences
