"""Constrained decoding on llama.cpp: llguidance token masks applied to the logits before sampling.

:class:`Guides` belongs to one loaded model: it builds llguidance's tokenizer from the model's vocabulary
once (about a second for 49k tokens, on the first constrained request) and a :class:`Guide` per request
from the grammar :func:`ffruntime.constraints.guidance_grammar` compiled. Each step the engine computes
the masks of every constrained sequence in the batch at once (:func:`compute_masks`: llguidance's
executor, in parallel threads, without the GIL), then for each sequence sets the logits of the tokens
the grammar forbids to −inf (a table lookup per mask byte and one add over the vocabulary, no Python
loop) and lets the sampler chain pick among the rest; the picked token is fed back with :meth:`Guide.accept`.
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.vocab import Vocab
from ffruntime.runtime import RequestRejected

if TYPE_CHECKING:
    import llguidance

MASK_THREADS = 4  # most threads llguidance's executor uses for one step's masks

_PENALTIES: npt.NDArray[np.float32] = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(np.bool_),
    np.float32(0.0),
    np.float32(-np.inf),
).astype(np.float32)
"""Row ``b``: the logit penalties of the 8 tokens whose allowed-bits are byte ``b`` (llguidance's masks
are little-endian bit sets: token ``i`` is bit ``i % 32`` of word ``i // 32``)."""


class Guide:
    """One sequence's grammar state: the mask for its next token, and the tokens it took."""

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self.matcher = matcher
        self.n_vocab = n_vocab
        self.bits: npt.NDArray[np.int32] = np.zeros((n_vocab + 31) // 32, dtype=np.int32)

    def compute(self) -> None:
        """This step's mask into :attr:`bits` (alone; :func:`compute_masks` does a batch at once)."""
        self.matcher.unsafe_compute_mask_ptr(self.bits.ctypes.data, self.bits.nbytes)

    def constrain(self, logits: npt.NDArray[np.float32]) -> None:
        """Forbidden tokens' logits to −inf, in place (the mask is computed already): each mask byte
        looks up its 8 penalties (0 or −inf) in :data:`_PENALTIES`, added to the logits in one pass."""
        self._check()
        penalties = _PENALTIES[self.bits.view(np.uint8)].reshape(-1)[: self.n_vocab]
        np.add(logits, penalties, out=logits)

    def accept(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            self._check()
            raise RuntimeFailure(f"the output constraint refused token {token}")

    @property
    def stopped(self) -> bool:
        """The grammar is complete and allows nothing more (not even whitespace)."""
        return bool(self.matcher.is_stopped())

    def _check(self) -> None:
        if self.matcher.is_error():
            raise RuntimeFailure(f"the output constraint failed: {self.matcher.get_error()}")


_EXECUTOR: list[Any] = []
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> Any:
    with _EXECUTOR_LOCK:
        if not _EXECUTOR:
            import llguidance

            threads = max(1, min(MASK_THREADS, os.cpu_count() or 1))
            _EXECUTOR.append(llguidance.LLExecutor(num_threads=threads))
        return _EXECUTOR[0]


def compute_masks(guides: list[Guide]) -> None:
    """The next-token masks of every guide, computed together (one call, llguidance's threads)."""
    if len(guides) == 1:
        guides[0].compute()
        return
    if not guides:
        return
    words = guides[0].bits.shape[0]
    buf: npt.NDArray[np.int32] = np.zeros((len(guides), words), dtype=np.int32)
    _executor().unsafe_compute_mask_ptr(
        [(g.matcher, i) for i, g in enumerate(guides)], buf.ctypes.data, words * 4, len(guides)
    )
    for i, g in enumerate(guides):
        g.bits = buf[i]


def _tokenizer(vocab: Vocab) -> llguidance.LLTokenizer:
    """llguidance's tokenizer of a llama.cpp vocabulary: every token's bytes (control tokens marked with
    a leading 0xFF, as llguidance expects, so no grammar can produce them as text) and llama.cpp's own
    tokenize function for the strings a grammar forces."""
    import llguidance

    lc = vocab.lc
    special = lc.LLAMA_TOKEN_ATTR_CONTROL
    user = lc.LLAMA_TOKEN_ATTR_USER_DEFINED
    tokens: list[bytes] = []
    for t in range(vocab.n_tokens):
        piece = vocab.piece(t, special=True)
        attr = int(lc.llama_vocab_get_attr(vocab.ptr, t))
        if attr & special or (attr & user and piece.startswith(b"<") and piece.endswith(b">")):
            piece = b"\xff" + piece
        tokens.append(piece)
    tokenize = ctypes.cast(lc.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    out: llguidance.LLTokenizer = llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens, vocab_ptr=vocab.ptr, tokenize_fptr=tokenize, eos_token=vocab.eos, slices=None
    )
    return out


class Guides:
    """The constrained-decoding side of one loaded model (thread-safe)."""

    def __init__(self, vocab: Vocab) -> None:
        self._vocab = vocab
        self._lock = threading.Lock()
        self._tokenizer: llguidance.LLTokenizer | None = None

    def tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = _tokenizer(self._vocab)
            return self._tokenizer

    def guide(self, grammar: str) -> Guide:
        """A fresh matcher of ``grammar`` (from :func:`~ffruntime.constraints.guidance_grammar`)."""
        import llguidance

        matcher = llguidance.LLMatcher(self.tokenizer(), grammar, log_level=0)
        if matcher.is_error():
            raise RequestRejected(f"the output constraint cannot be compiled: {matcher.get_error()}")
        return Guide(matcher, self._vocab.n_tokens)
