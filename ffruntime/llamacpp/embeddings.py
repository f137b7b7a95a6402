"""Embeddings on llama.cpp: every input of the requests waiting together goes into as few
``llama_decode`` batches as fit, one sequence id per input, pooled by llama.cpp.

Runs as the engine thread's side work (:class:`~ffruntime.llamacpp.engine.SideWork`), so embedding and
generation never compete for the cores. Pooling is the GGUF's own when it declares one, else the mean.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.library import attach_lora, binding, captured_log, context_params, log_tail
from ffruntime.llamacpp.threads import Threads, most_threads
from ffruntime.runtime import CancelFlag, Embeddings
from ffruntime.settings import LoadSettings

POOLING_MEAN = 1
MAX_SEQS = 32  # inputs per decode batch


@dataclass
class EmbedJob:
    inputs: list[list[int]]  # token ids, already truncated to the context
    cancel: CancelFlag
    result: concurrent.futures.Future[Embeddings]


class Embedder:
    """An embedding context on a loaded model, created on first use in the engine thread."""

    def __init__(
        self,
        model: Any,
        settings: LoadSettings,
        *,
        n_ctx: int,
        pooled_by_model: bool,
        loras: tuple[Any, ...],
        path: Path,
        threads: Threads | None = None,
    ) -> None:
        self.lc = binding()
        self.threads = threads if threads is not None else Threads(most_threads(settings))
        self.model, self.settings, self.n_ctx = model, settings, n_ctx
        self.pooling = None if pooled_by_model else POOLING_MEAN
        self.loras, self.path = loras, path
        self.n_embd = int(self.lc.llama_model_n_embd(model))
        self.ctx: Any = None
        self.context_params: Any = None
        self._jobs: list[EmbedJob] = []
        self._lock = threading.Lock()
        self.batches = 0
        self.inputs = 0

    def submit(self, job: EmbedJob) -> None:
        with self._lock:
            self._jobs.append(job)

    def pending(self) -> bool:
        with self._lock:
            return bool(self._jobs)

    def close(self) -> None:
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            job.result.set_exception(RuntimeFailure("the model was unloaded"))
        if self.ctx:
            with captured_log():
                self.lc.llama_free(self.ctx)
            self.threads.forget(self.ctx)
            self.ctx = None

    def _context(self) -> Any:
        if not self.ctx:
            lc = self.lc
            self.context_params = context_params(
                self.settings, n_ctx=self.n_ctx, n_batch=self.n_ctx, n_ubatch=self.n_ctx,
                n_seq_max=MAX_SEQS, embeddings=True, pooling=self.pooling, kv_unified=True,
            )
            with captured_log() as log:
                self.ctx = lc.llama_init_from_model(self.model, self.context_params)
            if not self.ctx:
                raise RuntimeFailure(f"llama.cpp cannot create an embedding context for {self.path}: "
                                     + log_tail(log))
            attach_lora(self.ctx, self.loras, self.path)
        return self.ctx

    def run(self) -> None:
        """Embed every waiting job's inputs, packed into shared batches."""
        with self._lock:
            jobs, self._jobs = self._jobs, []
        live = []
        for job in jobs:
            if job.cancel.is_set:
                job.result.cancel()
            else:
                live.append(job)
        if not live:
            return
        try:
            flat = [toks for job in live for toks in job.inputs]
            vectors = self._embed_all(flat)
        except Exception as exc:
            for job in live:
                job.result.set_exception(exc)
            return
        at = 0
        for job in live:
            n = len(job.inputs)
            job.result.set_result(Embeddings(vectors[at : at + n], sum(len(t) for t in job.inputs)))
            at += n

    def _embed_all(self, inputs: list[list[int]]) -> npt.NDArray[np.float32]:
        ctx = self._context()
        out: list[npt.NDArray[np.float32]] = []
        group: list[list[int]] = []
        for toks in inputs:
            if group and (len(group) == MAX_SEQS or sum(map(len, group)) + len(toks) > self.n_ctx):
                out += self._batch(ctx, group)
                group = []
            group.append(toks)
        if group:
            out += self._batch(ctx, group)
        return np.stack(out) if out else np.zeros((0, self.n_embd), dtype=np.float32)

    def _batch(self, ctx: Any, group: list[list[int]]) -> list[npt.NDArray[np.float32]]:
        lc = self.lc
        total = sum(map(len, group))
        batch = lc.llama_batch_init(total, 0, 1)
        try:
            i = 0
            for sid, toks in enumerate(group):
                for pos, tok in enumerate(toks):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                    batch.seq_id[i][0] = sid
                    batch.logits[i] = True
                    i += 1
            batch.n_tokens = i
            lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
            with captured_log() as log:
                rc = self.threads.decode(lc, ctx, batch, total, kind="embed")
            if rc != 0:
                why = log_tail(log)
                raise RuntimeFailure(f"llama_decode failed ({rc}) embedding with {self.path}: {why}")
            vectors = []
            for sid in range(len(group)):
                ptr = lc.llama_get_embeddings_seq(ctx, sid)
                if not ptr:
                    raise RuntimeFailure(f"{self.path} produced no pooled embedding")
                vec = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
                norm = float(np.linalg.norm(vec))
                vectors.append((vec / norm if norm > 0 else vec).astype(np.float32))
        finally:
            lc.llama_batch_free(batch)
        self.batches += 1
        self.inputs += len(group)
        return vectors
