"""Prefill against decode: how many prompt tokens a step may read while other sequences are generating,
and the inter-token latency those sequences see.

A step that reads a prompt chunk beside the generating sequences' tokens delays each of them by the
chunk's cost. :class:`Prefill` sizes the chunk from two measurements, so that such a step takes at most
:data:`ITL_FACTOR` times a decode-only step of the same sequences:

- ``decode``: the average time of a decode-only step of that many sequences (from
  :class:`~ffruntime.llamacpp.threads.Threads`, on the current thread count);
- ``per_token``: the moving average of a prompt token's cost, from every step that read prompt tokens
  (the step's time less the decode part, over the prompt tokens read).

While no sequence is generating a prompt is read in chunks of the whole batch (fastest first token).
:class:`Gaps` keeps the last inter-token gaps of all sequences for the p50/p99 the server exports.
"""

from __future__ import annotations

import collections

import numpy as np

ITL_FACTOR = 2.0  # a step with a prompt chunk may take this many times a decode-only step
FIRST_CHUNK = 32  # prompt tokens a mixed step reads before the cost of one is measured
MIN_CHUNK = 8
ALPHA = 0.2
WINDOW = 4096  # inter-token gaps kept for the percentiles


class Prefill:
    def __init__(self, n_batch: int, most: int | None = None) -> None:
        self.n_batch = n_batch
        self.most = min(most or n_batch, n_batch)  # an operator's fixed chunk (prefill_chunk option)
        self.per_token: float | None = None

    def budget(self, decode: float | None) -> int:
        """Prompt tokens a step may read beside generating sequences whose decode-only step takes
        ``decode`` seconds (``None``: not measured yet)."""
        if decode is None or self.per_token is None or self.per_token <= 0:
            return min(FIRST_CHUNK, self.most)
        fit = int((ITL_FACTOR - 1.0) * decode / self.per_token)
        return max(MIN_CHUNK, min(self.most, fit))

    def record(self, seconds: float, prompt_tokens: int, decode: float | None) -> None:
        """A step read ``prompt_tokens`` in ``seconds`` beside a decode part that takes ``decode``."""
        if prompt_tokens < MIN_CHUNK:
            return
        cost = max(0.0, seconds - (decode or 0.0)) / prompt_tokens
        self.per_token = cost if self.per_token is None else self.per_token + ALPHA * (cost - self.per_token)


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
