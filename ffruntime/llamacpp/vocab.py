"""A llama.cpp vocabulary: tokenize, token pieces, special tokens and model metadata.

Shared by the verify stage's :class:`~ffruntime.llamacpp.eval.LlamaEval` and the serving engine, so both
turn text into the same tokens. Tokenizing only reads the vocabulary, so any thread may do it while
another decodes (llama.cpp's own server tokenizes in its HTTP threads). :func:`gguf_prompting` reads the
GGUF's own chat template and special tokens for :mod:`ffruntime.prompting`, for serving and verify alike.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.library import binding
from ffruntime.prompting import ModelfilePrompt, ModelPrompting, model_prompting


def _read(call: Callable[[Any], int]) -> str | None:
    """A string llama.cpp writes into a buffer (``call(buf)`` returns its full length, or < 0)."""
    buf = ctypes.create_string_buffer(4096)
    n = call(buf)
    if n >= len(buf):
        buf = ctypes.create_string_buffer(n + 1)
        n = call(buf)
    return buf.value.decode("utf-8", "replace") if n >= 0 else None


def _by_index(fn: Callable[..., int], model: Any, i: int, buf: Any) -> int:
    return int(fn(model, i, buf, len(buf)))


class Vocab:
    def __init__(self, model: Any) -> None:
        self.lc = binding()
        self.model = model
        self.ptr = self.lc.llama_model_get_vocab(model)
        self.n_tokens = int(self.lc.llama_vocab_n_tokens(self.ptr))
        # Per-token answers the engine needs at every step, kept: each ctypes call releases the GIL,
        # and getting it back behind a busy event loop costs up to the 5 ms switch interval.
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        raw = text.encode("utf-8")
        cap = len(raw) + 16
        out = (self.lc.llama_token * cap)()
        n = self.lc.llama_tokenize(self.ptr, raw, len(raw), out, cap, add_special, parse_special)
        if n < 0:  # the buffer was too small: -n is the size needed
            cap = -n
            out = (self.lc.llama_token * cap)()
            n = self.lc.llama_tokenize(self.ptr, raw, len(raw), out, cap, add_special, parse_special)
        if n < 0:
            raise RuntimeFailure(f"cannot tokenize {len(raw)} bytes")
        return list(out[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        if special:
            return self._piece(token, special=True)
        out = self._pieces.get(token)
        if out is None:
            out = self._pieces[token] = self._piece(token, special=False)
        return out

    def _piece(self, token: int, *, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.lc.llama_token_to_piece(self.ptr, token, buf, len(buf), 0, special)
        if n < 0:  # a piece longer than the buffer: -n is its length
            buf = ctypes.create_string_buffer(-n)
            n = self.lc.llama_token_to_piece(self.ptr, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def prompt_tokens(self, prompt: str, *, add_special: bool = True) -> list[int]:
        """A rendered prompt's tokens, special tokens parsed; the model's BOS is added (with
        ``add_special``) unless the template already wrote it."""
        bos = self.text(self.bos) if self.adds_bos and self.bos >= 0 else ""
        add = add_special and not (bos and prompt.startswith(bos))
        return self.tokenize(prompt, add_special=add, parse_special=True)

    def text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", "replace")

    def meta(self, key: str) -> str | None:
        return _read(lambda buf: self.lc.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf)))

    def metadata(self) -> dict[str, str]:
        """Every GGUF metadata key and value (as text; llama.cpp leaves long arrays out)."""
        lc, model, out = self.lc, self.model, {}
        for i in range(int(lc.llama_model_meta_count(model))):
            key = _read(functools.partial(_by_index, lc.llama_model_meta_key_by_index, model, i))
            val = _read(functools.partial(_by_index, lc.llama_model_meta_val_str_by_index, model, i))
            if key is not None and val is not None:
                out[key] = val
        return out

    @property
    def bos(self) -> int:
        return int(self.lc.llama_vocab_bos(self.ptr))

    @property
    def eos(self) -> int:
        return int(self.lc.llama_vocab_eos(self.ptr))

    @property
    def adds_bos(self) -> bool:
        return bool(self.lc.llama_vocab_get_add_bos(self.ptr))

    def is_eog(self, token: int) -> bool:
        out = self._eog.get(token)
        if out is None:
            out = self._eog[token] = bool(self.lc.llama_vocab_is_eog(self.ptr, token))
        return out

    def fim(self) -> tuple[int, int, int] | None:
        """The fill-in-the-middle tokens (prefix, suffix, middle), or None when the model has none."""
        ids = (
            int(self.lc.llama_vocab_fim_pre(self.ptr)),
            int(self.lc.llama_vocab_fim_suf(self.ptr)),
            int(self.lc.llama_vocab_fim_mid(self.ptr)),
        )
        return ids if min(ids) >= 0 else None


def _token_text(vocab: Vocab, key: str) -> str:
    tid = vocab.meta(key) or ""
    return vocab.text(int(tid)) if tid.isdigit() and int(tid) < vocab.n_tokens else ""


def gguf_prompting(vocab: Vocab, modelfile: ModelfilePrompt) -> ModelPrompting:
    """The prompts of a GGUF model: ``modelfile``'s TEMPLATE, SYSTEM and MESSAGEs, else the GGUF's
    ``tokenizer.chat_template`` with its BOS and EOS text."""
    return model_prompting(
        modelfile,
        vocab.meta("tokenizer.chat_template"),
        bos_token=_token_text(vocab, "tokenizer.ggml.bos_token_id"),
        eos_token=_token_text(vocab, "tokenizer.ggml.eos_token_id"),
    )
