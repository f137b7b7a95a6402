"""Prefill against decode: how many prompt tokens a step may read while other sequences are generating,
and the inter-token latency those sequences see.

With a KV stream per sequence llama.cpp splits a batch into ubatches of equal tokens per sequence, so a
prompt chunk decoded beside the generating sequences' tokens is a second forward pass over all the
weights, and for a small model a pass costs about the same for 1 or 30 tokens: such a mixed step takes
2-3x a decode-only step whatever the chunk (docs/benchmarks.md, issue 22). So while sequences are
generating the engine never mixes: it alternates a decode-only step (one token of each generating
sequence, one pass) with a prompt-only step (one chunk of one sequence's prompt, one pass), and each
generating sequence waits for at most one of each between two tokens.

:class:`Prefill` sizes the prompt-only step so that it takes at most :data:`PROMPT_STEP` times the
decode-only step of the generating sequences. It models one pass of ``n`` tokens as
``fixed + per_token * n``, both learned from measured single-pass steps on the same thread count: the
moving average of the decode-only steps (a few tokens: mostly the fixed cost) and that of the
prompt-only steps (the slope between the two). A chunk may at most double from the last one, so an
estimate from far-away chunk sizes (the whole-batch chunks read while nothing generates) is approached,
not trusted at once.

While no sequence is generating a prompt is read in chunks of the whole batch (fastest first token).
:class:`Gaps` keeps the last inter-token gaps of all sequences for the p50/p99 the server exports.
"""

from __future__ import annotations

import collections

import numpy as np

PROMPT_STEP = 1.0  # a prompt-only step beside generating sequences may take this many decode-only steps
FIRST_CHUNK = 16  # prompt tokens of a prompt-only step before the cost model has both measurements
MIN_CHUNK = 4
GROWTH = 2  # a chunk is at most this many times the last one read beside generating sequences
ALPHA = 0.2
WINDOW = 4096  # inter-token gaps kept for the percentiles

Mean = tuple[float, float]  # moving averages of (tokens, seconds) of single-pass steps


class Prefill:
    def __init__(self, n_batch: int, most: int | None = None) -> None:
        self.n_batch = n_batch
        self.most = min(most or n_batch, n_batch)  # an operator's fixed chunk (prefill_chunk option)
        self._decode: dict[int, Mean] = {}  # thread count → decode-only steps
        self._prompt: dict[int, Mean] = {}  # thread count → prompt-only steps
        self.last_chunk = 0  # the last chunk read beside generating sequences

    def cost(self, threads: int) -> tuple[float, float] | None:
        """(fixed, per_token) seconds of one pass on ``threads`` threads; ``None`` before both kinds of
        step were measured there."""
        d, p = self._decode.get(threads), self._prompt.get(threads)
        if d is None or p is None or p[0] <= d[0]:
            return None
        per_token = max(0.0, (p[1] - d[1]) / (p[0] - d[0]))
        return max(0.0, d[1] - per_token * d[0]), per_token

    def budget(self, decode: float | None, threads: int) -> int:
        """Prompt tokens of a prompt-only step beside generating sequences whose decode-only step takes
        ``decode`` seconds (``None``: not measured yet) on ``threads`` threads."""
        cost = self.cost(threads)
        if decode is None or cost is None:
            n = FIRST_CHUNK
        else:
            fixed, per_token = cost
            room = PROMPT_STEP * decode - fixed
            n = self.most if per_token <= 0 else int(room / per_token)
        if self.last_chunk:
            n = min(n, GROWTH * self.last_chunk)
        n = max(MIN_CHUNK, min(self.most, n))
        self.last_chunk = n
        return n

    def record(self, seconds: float, tokens: int, prompt: bool, threads: int) -> None:
        """A single-pass step of ``tokens`` (a prompt chunk of one sequence, or one token of each
        generating sequence) took ``seconds`` on ``threads`` threads."""
        means = self._prompt if prompt else self._decode
        old = means.get(threads)
        if old is None:
            means[threads] = (float(tokens), seconds)
        else:
            means[threads] = (old[0] + ALPHA * (tokens - old[0]), old[1] + ALPHA * (seconds - old[1]))


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
