"""Prefill against decode: how many prompt tokens a step may read while other sequences are generating,
and the inter-token latency those sequences see.

With a KV stream per sequence llama.cpp splits a batch into ubatches of equal tokens per sequence, so a
prompt chunk decoded beside the generating sequences' tokens is a second forward pass over all the
weights: a mixed step costs a decode-only step plus a prompt-only one (docs/benchmarks.md, issue 22).
So while sequences are generating the engine never mixes: it alternates a decode-only step (one token
of each generating sequence, one pass) with a prompt-only step (one chunk of one sequence's prompt, one
pass), and each generating sequence waits for at most one of each between two tokens.

:class:`Prefill` sizes the prompt-only step so that it takes at most :data:`PROMPT_STEP` times the
decode-only step of the generating sequences, from what each chunk size measured, not from a model of
a pass: on a small model the cost of a pass is far from linear in its tokens (SmolLM2 Q4_1, 2 threads:
one token takes about half of three, 4 tokens as long as the 3-sequence decode step, 8 tokens twice
that), and the straight line an earlier version fitted through the averages of the decode-only and
prompt-only steps had a slope near zero whenever the two steps were of the same size, so its chunk
doubled until a step took 2-3 decode steps (docs/benchmarks.md). Chunks come in the sizes of
:data:`SIZES`; each (thread count, size) keeps the moving average of its prompt-only steps. Before each
prompt-only step the size moves down while the current one measures over the budget, and up one size
when the next one measured within it, or, unmeasured, when the current size's cost scaled in
proportion to the bigger size fits (per token a pass only gets cheaper as it grows, so this never
expects too little). A step :data:`OUTLIER` times its size's average (another process took a core) is
not folded in, and a size's average is dropped after :data:`STALE` prompt-only steps at other sizes
(positions grow; a bad moment is not kept forever).

While no sequence is generating a prompt is read in chunks of the whole batch (fastest first token).
:class:`Gaps` keeps the last inter-token gaps of all sequences for the p50/p99 the server exports.
"""

from __future__ import annotations

import collections

import numpy as np

PROMPT_STEP = 1.0  # a prompt-only step beside generating sequences may take this many decode-only steps
SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)  # prompt-only chunk sizes
FIRST_CHUNK = 4  # the size of the first prompt-only step on a thread count (nothing measured there yet)
ALPHA = 0.2
OUTLIER = 3.0  # a step this many times its size's average is not folded in
STALE = 64  # prompt-only steps at other sizes after which a size's average is forgotten
WINDOW = 4096  # inter-token gaps kept for the percentiles


class Prefill:
    def __init__(self, n_batch: int, most: int | None = None) -> None:
        self.n_batch = n_batch
        self.most = min(most or n_batch, n_batch)  # an operator's fixed chunk (prefill_chunk option)
        self.sizes = (*(s for s in SIZES if s < self.most), self.most)
        self._decode: dict[tuple[int, int], float] = {}  # (threads, tokens) → decode-only step, seconds
        self._prompt: dict[tuple[int, int], tuple[float, int]] = {}  # (threads, size) → (seconds, when)
        self._at: dict[int, int] = {}  # threads → index in sizes of the last prompt-only chunk
        self._steps = 0  # prompt-only steps recorded
        self.last_chunk = 0

    def decode_step(self, tokens: int, threads: int) -> float | None:
        """The average decode-only step of ``tokens`` generating sequences on ``threads`` threads."""
        return self._decode.get((threads, tokens))

    def measured(self, size: int, threads: int) -> float | None:
        """The average prompt-only step of ``size`` tokens on ``threads`` threads, while not stale."""
        got = self._prompt.get((threads, size))
        if got is None or self._steps - got[1] > STALE:
            return None
        return got[0]

    def budget(self, generating: int, threads: int) -> int:
        """Prompt tokens of the prompt-only step beside ``generating`` sequences on ``threads`` threads."""
        sizes = self.sizes
        default = max(i for i, s in enumerate(sizes) if s <= FIRST_CHUNK or i == 0)
        i = self._at.get(threads, default)
        decode = self.decode_step(generating, threads)
        if decode is not None:
            room = PROMPT_STEP * decode
            while i > 0 and (self.measured(sizes[i], threads) or 0.0) > room:
                i -= 1
            now = self.measured(sizes[i], threads)
            if now is not None and now <= room and i + 1 < len(sizes):
                bigger = self.measured(sizes[i + 1], threads)
                if (bigger if bigger is not None else now * sizes[i + 1] / sizes[i]) <= room:
                    i += 1
        self._at[threads] = i
        self.last_chunk = sizes[i]
        return sizes[i]

    def record(self, seconds: float, tokens: int, prompt: bool, threads: int) -> None:
        """A single-pass step of ``tokens`` (a prompt chunk of one sequence, or one token of each
        generating sequence) took ``seconds`` on ``threads`` threads."""
        if not prompt:
            old = self._decode.get((threads, tokens))
            if old is not None and seconds > OUTLIER * old:
                return
            self._decode[(threads, tokens)] = seconds if old is None else old + ALPHA * (seconds - old)
            return
        if tokens not in self.sizes:  # a prompt's last piece, shorter than the chunk
            return
        self._steps += 1
        now = self.measured(tokens, threads)
        if now is not None and seconds > OUTLIER * now:
            return
        mean = seconds if now is None else now + ALPHA * (seconds - now)
        self._prompt[(threads, tokens)] = (mean, self._steps)


class Gaps:
    """The last :data:`WINDOW` inter-token gaps (seconds), all sequences together."""

    def __init__(self) -> None:
        self._gaps: collections.deque[float] = collections.deque(maxlen=WINDOW)

    def add(self, seconds: float) -> None:
        self._gaps.append(seconds)

    def percentiles(self) -> tuple[float, float]:
        """(p50, p99) in seconds; zeros before any gap."""
        if not self._gaps:
            return 0.0, 0.0
        p50, p99 = np.percentile(np.fromiter(self._gaps, dtype=np.float64), [50, 99])
        return float(p50), float(p99)
