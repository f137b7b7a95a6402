"""A request's sampling options → one llama.cpp sampler chain per sequence, and token logprobs.

:func:`sampling` reads the Ollama options (the Modelfile ``PARAMETER``s ∪ the request's), rejecting a
wrong type as a 400 (types and allowed values from :data:`ffruntime.options.OPTIONS`; each field of
:class:`Sampling` is an option there); :class:`Sampler` owns the ``llama_sampler`` chain (penalties,
top-k/typical/top-p/min-p, temperature, mirostat, seeded distribution, or greedy at temperature 0)
that llama.cpp samples each step with. Output constraints act before it, on the logits
(:mod:`ffruntime.llamacpp.guide`).

The defaults are llama-cpp-python's (what this server used before this engine), so a request without
options samples as it did.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ffruntime.llamacpp.library import binding
from ffruntime.options import number
from ffruntime.runtime import ParamValue, RequestRejected

_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1
    num_predict: int = -1  # < 0: until an end-of-generation token, a stop string or the context is full
    num_ctx: int = 0  # 0: the loaded context per sequence


def sampling(options: Mapping[str, ParamValue]) -> Sampling:
    """The sampling fields of ``options``, typed as :data:`~ffruntime.options.OPTIONS` says (other
    options are left to other readers)."""
    fields = Sampling.__dataclass_fields__
    values: dict[str, Any] = {key: number(key, options[key]) for key in fields if key in options}
    s = Sampling(**values)
    if s.num_ctx < 0:
        raise RequestRejected("option num_ctx must not be negative")
    return s


class Sampler:
    """A ``llama_sampler`` chain; :meth:`sample` picks (and accepts) the token of one batch output.

    Greedy decoding without penalties is an argmax over the logits in llama.cpp's buffer (the first
    maximum, as llama.cpp's greedy sampler picks): ``llama_sampler_sample`` first copies the whole
    vocabulary into a candidate array, 125–150 µs a token for SmolLM2's 49,152 tokens, against ~15 µs."""

    def __init__(self, n_vocab: int, s: Sampling) -> None:
        lc = binding()
        self._lc = lc
        self.n_vocab = n_vocab
        penalties = s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty
        self.greedy = s.temperature <= 0 and not penalties  # nothing stateful in the chain
        self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            if s.repeat_penalty != 1.0 or s.presence_penalty or s.frequency_penalty:
                last_n = s.repeat_last_n if s.repeat_last_n >= 0 else 2**31 - 1
                self._add(lc.llama_sampler_init_penalties(
                    n_vocab, last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                ))
            seed = s.seed if s.seed >= 0 else _DEFAULT_SEED
            if s.temperature <= 0:
                self._add(lc.llama_sampler_init_greedy())
            elif s.mirostat == 1:
                self._add(lc.llama_sampler_init_temp(s.temperature))
                self._add(lc.llama_sampler_init_mirostat(n_vocab, seed, s.mirostat_tau, s.mirostat_eta, 100))
            elif s.mirostat == 2:
                self._add(lc.llama_sampler_init_temp(s.temperature))
                self._add(lc.llama_sampler_init_mirostat_v2(seed, s.mirostat_tau, s.mirostat_eta))
            else:
                if s.top_k > 0:
                    self._add(lc.llama_sampler_init_top_k(s.top_k))
                if s.typical_p < 1.0:
                    self._add(lc.llama_sampler_init_typical(s.typical_p, 1))
                if s.top_p < 1.0:
                    self._add(lc.llama_sampler_init_top_p(s.top_p, 1))
                if s.min_p > 0.0:
                    self._add(lc.llama_sampler_init_min_p(s.min_p, 1))
                self._add(lc.llama_sampler_init_temp(s.temperature))
                self._add(lc.llama_sampler_init_dist(seed))
        except BaseException:
            self.close()
            raise

    def _add(self, smpl: Any) -> None:
        self._lc.llama_sampler_chain_add(self.chain, smpl)  # the chain owns it from now on

    def sample(self, ctx: Any, idx: int) -> int:
        if self.greedy:
            address = ctypes.cast(self._lc.llama_get_logits_ith(ctx, idx), ctypes.c_void_p).value
            row = (ctypes.c_float * self.n_vocab).from_address(address or 0)  # ctypes caches the type
            return int(np.frombuffer(memoryview(row), dtype=np.float32).argmax())
        return int(self._lc.llama_sampler_sample(self.chain, ctx, idx))

    def close(self) -> None:
        if self.chain:
            self._lc.llama_sampler_free(self.chain)
            self.chain = None


def log_softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    x = logits.astype(np.float64)
    x -= x.max()
    out: npt.NDArray[np.float64] = x - np.log(np.exp(x).sum())
    return out


def top_alternatives(logp: npt.NDArray[np.float64], n: int) -> list[tuple[int, float]]:
    """The ``n`` likeliest tokens, most likely first (ties by token id)."""
    if n <= 0:
        return []
    n = min(n, logp.shape[0])
    idx = np.argpartition(-logp, n - 1)[:n]
    order = sorted(idx.tolist(), key=lambda i: (-logp[i], i))
    return [(int(i), float(logp[i])) for i in order]
