"""Evaluate a GGUF with llama.cpp: tokenize, logits for every position in one pass, greedy generation,
sentence embeddings. The verify stage's measuring instrument.

:class:`LlamaEval` opens the model (and optionally a LoRA adapter) through llama-cpp-python's C API,
so it controls what the high-level ``Llama`` class does not expose: the CPU buffer types (see
:mod:`ffruntime.llamacpp.library`), one decode call for all positions of a text, and freeing the model
as soon as the caller is done (``with LlamaEval(...) as m:``).

The context is created on first use and re-created larger only when a text needs it (its size sets
the compute buffers, and a small one is markedly faster). Flash attention is off by default, as in
llama-cpp-python's ``Llama`` (which is what serves the model): on a 135M model the small numeric
difference it makes is enough to flip a q8_0 greedy answer, so verify measures what is served.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.library import (
    attach_lora,
    binding,
    captured_log,
    context_params,
    free_handles,
    load_model,
    log_tail,
    lora_adapter,
    model_params,
)
from ffruntime.llamacpp.threads import Threads, most_threads
from ffruntime.llamacpp.vocab import Vocab
from ffruntime.settings import LoadSettings

FloatArray = npt.NDArray[np.float32]


class LlamaEval:
    """One model (and optionally a LoRA adapter) in llama.cpp."""

    def __init__(
        self,
        path: Path,
        *,
        embedding: bool = False,
        lora: Path | Sequence[Path] | None = None,
        threads: int | None = None,
        settings: LoadSettings | None = None,
    ) -> None:
        self.lc = binding()
        lc = self.lc
        self.path = path
        self.embedding = embedding
        self.n_ctx = 0
        base = settings if settings is not None else LoadSettings()
        self.settings = base.with_(threads=threads) if threads is not None else base
        self.threads = Threads(most_threads(self.settings))  # as the server's engine decides, per decode
        self._model: Any = None
        self._ctx: Any = None
        self._loras: tuple[Any, ...] = ()
        self._owner = True  # frees the model and adapters (a twin frees only its context)
        self.model_params = model_params(self.settings)  # what was loaded with, for comparison
        self.context_params: Any = None
        self._model = load_model(path, self.model_params)
        try:
            self.vocab = Vocab(self._model)
            self.n_vocab = self.vocab.n_tokens
            self.n_embd = int(lc.llama_model_n_embd(self._model))
            for adapter in [lora] if isinstance(lora, Path) else (lora or ()):
                self._loras = (*self._loras, lora_adapter(self._model, adapter, path))
        except BaseException:
            self.close()
            raise

    def _context(self, n_tokens: int) -> Any:
        """A context holding at least ``n_tokens`` (all of them decodable in one batch)."""
        if self._ctx and self.n_ctx >= n_tokens:
            return self._ctx
        lc = self.lc
        if self._ctx:
            with captured_log():
                lc.llama_free(self._ctx)
            self.threads.forget(self._ctx)
            self._ctx = None
        n_ctx = max(64, -(-n_tokens // 64) * 64)
        cparams = context_params(
            self.settings, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, embeddings=self.embedding
        )
        self.context_params = cparams
        with captured_log() as log:
            self._ctx = lc.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise RuntimeFailure(f"llama.cpp cannot create a context for {self.path}: {log_tail(log)}")
        self.n_ctx = n_ctx
        attach_lora(self._ctx, self._loras, self.path)
        return self._ctx

    def __enter__(self) -> LlamaEval:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def twin(self) -> LlamaEval:
        """Another evaluator of this loaded model (and adapters), with its own context and thread policy,
        so that a second thread can evaluate the model at the same time (llama.cpp's contexts of one
        model are independent). It owns nothing else: close it before this one."""
        twin = copy.copy(self)
        twin._ctx, twin.n_ctx, twin.context_params = None, 0, None
        twin.threads = Threads(most_threads(self.settings))
        twin._owner = False
        return twin

    def close(self) -> None:
        if self._owner:
            free_handles(self._ctx, self._loras, self._model)
        else:
            free_handles(self._ctx, (), None)
        self._ctx = self._model = None
        self._loras = ()

    # -- vocabulary (see :class:`~ffruntime.llamacpp.vocab.Vocab`) ----------------------------
    def meta(self, key: str) -> str | None:
        return self.vocab.meta(key)

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def piece(self, token: int, *, special: bool = False) -> bytes:
        return self.vocab.piece(token, special=special)

    def token_text(self, token: int) -> str:
        return self.vocab.text(token)

    @property
    def bos(self) -> int:
        return self.vocab.bos

    @property
    def eos(self) -> int:
        return self.vocab.eos

    @property
    def adds_bos(self) -> bool:
        return self.vocab.adds_bos

    def is_eog(self, token: int) -> bool:
        return self.vocab.is_eog(token)

    # -- evaluation ----------------------------------------------------------------------------
    def _decode(self, tokens: list[int], start: int, all_logits: bool) -> None:
        lc = self.lc
        n = len(tokens)
        if start + n > self.n_ctx:
            raise RuntimeFailure(f"{start + n} tokens do not fit the evaluation context of {self.n_ctx}")
        batch = lc.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = all_logits or i == n - 1
            with captured_log() as log:
                rc = self.threads.decode(lc, self._ctx, batch, n)
            if rc != 0:
                raise RuntimeFailure(f"llama_decode failed ({rc}) on {self.path}: {log_tail(log)}")
        finally:
            lc.llama_batch_free(batch)

    def _start(self, n_tokens: int) -> None:
        """A cleared context for a sequence of up to ``n_tokens``."""
        ctx = self._context(n_tokens)
        self.lc.llama_memory_clear(self.lc.llama_get_memory(ctx), True)

    def logits(self, tokens: list[int]) -> FloatArray:
        """Logits after each token, shape (len(tokens), n_vocab), from one decode of the whole text."""
        self._start(len(tokens))
        self._decode(tokens, 0, all_logits=True)
        ptr = self.lc.llama_get_logits(self._ctx)
        return np.ctypeslib.as_array(ptr, shape=(len(tokens), self.n_vocab)).copy()

    def generate(self, prompt: list[int], max_tokens: int) -> list[int]:
        """Greedy continuation of ``prompt``, stopping at an end-of-generation token."""
        self._start(len(prompt) + max_tokens)
        self._decode(prompt, 0, all_logits=False)
        out: list[int] = []
        pos = len(prompt)
        for _ in range(max_tokens):
            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
            tok = int(np.argmax(logits))
            if self.is_eog(tok):
                break
            out.append(tok)
            if pos + 1 >= self.n_ctx:
                break
            self._decode([tok], pos, all_logits=False)
            pos += 1
        return out

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", "replace")

    def embed(self, text: str) -> FloatArray:
        """The pooled, L2-normalised sentence embedding (the model's own pooling type)."""
        if not self.embedding:
            raise RuntimeFailure("the model was opened without embedding=True")
        tokens = self.tokenize(text, add_special=True)
        self._start(len(tokens))
        self._decode(tokens, 0, all_logits=True)
        ptr = self.lc.llama_get_embeddings_seq(self._ctx, 0)
        if not ptr:
            raise RuntimeFailure(f"{self.path} produced no pooled embedding (has it a pooling type?)")
        vec = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float32)
        norm = float(np.linalg.norm(vec))
        if not np.isfinite(norm) or norm == 0.0:
            raise RuntimeFailure(f"{self.path} produced a degenerate embedding (norm {norm})")
        return vec / norm
