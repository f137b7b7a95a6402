"""What the tensor backends share: tokenizing, batching, the Embed and Tensor protocols over one graph.

A backend (``ffruntime.onnxruntime``, ``.tvm``, ``.tensorrt``) subclasses :class:`GraphRuntime` and
implements :meth:`GraphRuntime.run_graph` (numpy feeds → numpy outputs); everything else — the
tokenizer (``tokenizers``, from the variant's ``tokenizer.json``), padding, batching of concurrent
requests (:mod:`ffruntime.batching`), OIP tensors — is here once.

**Lanes.** A backend whose ``run_graph`` may be called from several threads at once (ONNX Runtime on
the CPU) is given ``lanes`` > 1: a batch is then cut into up to ``lanes`` pieces that run at the same
time, each on one thread. Text rows are sorted by length first, so each piece is padded only to its own
longest row. On 2 cores, MiniLM int8 ran 32 sentences in 18 ms as two one-thread pieces against 27 ms
as one two-thread run, and one sentence in 1.4 ms on one thread against 1.9 ms on two: small ops
spend more time waking a second thread than they save (docs/benchmarks.md, "Embeddings").

Text models (``embed``, ``classify``) take ``input_ids`` and ``attention_mask`` (INT64, batch ×
sequence); over the Open Inference Protocol they show one ``text`` input (BYTES, one string per row).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ffruntime.batching import Batcher
from ffruntime.errors import RuntimeFailure
from ffruntime.graph_spec import TOKENIZER_FILE, GraphSpec
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    Embeddings,
    EmbedInput,
    RequestRejected,
    Tensor,
    TensorSpec,
)
from ffruntime.tensors import from_array, to_array

Array = npt.NDArray[Any]
Feeds = dict[str, Array]
TEXT_INPUT: Final = "text"
MAX_BATCH: Final = int(os.environ.get("FF_MAX_BATCH", "32"))
MAX_WAIT: Final = float(os.environ.get("FF_BATCH_WAIT_MS", "0")) / 1000
INLINE_SECONDS: Final = 0.003  # a lone request that ran faster than this runs on the event loop (batching.py)
SPLIT_SECONDS: Final = 0.001  # a tensor batch is cut over the lanes only when one run of it takes longer
MAX_TEXTS: Final = 2048  # texts in one request


def pad_rows(rows: Sequence[Sequence[int]], length: int) -> tuple[Array, Array]:
    ids = np.zeros((len(rows), length), dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def length_pieces(lengths: Sequence[int], pieces: int) -> list[list[int]]:
    """Row indices in at most ``pieces`` groups of similar length, balanced by padded tokens.

    The rows are sorted by length and cut into contiguous runs; the cost of a run is its row count times
    its longest row (what it is padded to). The smallest largest cost is found by bisection over what a
    greedy cut (longest rows first) can achieve.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    if pieces <= 1 or len(order) <= 1:
        return [order] if order else []

    def cut(limit: int) -> list[list[int]]:
        groups: list[list[int]] = []
        for i in order:  # longest first: a group's first row is its longest
            if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= limit:
                groups[-1].append(i)
            else:
                groups.append([i])
        return groups

    lo, hi = lengths[order[0]], len(order) * lengths[order[0]]
    while lo < hi:
        mid = (lo + hi) // 2
        if len(cut(mid)) <= pieces:
            hi = mid
        else:
            lo = mid + 1
    return cut(lo)


class GraphRuntime:
    """One loaded graph; subclasses provide :meth:`run_graph` and ``memory_bytes``."""

    def __init__(
        self, spec: GraphSpec, files: Mapping[str, Path], *, memory_bytes: int, lanes: int = 1
    ) -> None:
        self.spec = spec
        self._memory = memory_bytes
        self.lanes = max(1, lanes)
        self._lane_pool = ThreadPoolExecutor(self.lanes - 1, "ff-lane") if self.lanes > 1 else None
        self._row_seconds = 0.0  # the last unsplit tensor run's seconds per batch row (0: not measured)
        self._tokenizer = None
        if spec.text:
            tok = files.get(TOKENIZER_FILE)
            if tok is None:
                raise RuntimeFailure(f"a {spec.task} model needs its {TOKENIZER_FILE} layer; it has none")
            from tokenizers import Tokenizer

            try:
                self._tokenizer = Tokenizer.from_file(str(tok))
            except Exception as exc:  # tokenizers raises its own Exception type for a bad file
                raise RuntimeFailure(f"cannot read {TOKENIZER_FILE}: {exc}") from None
            self._tokenizer.no_padding()
            self._tokenizer.no_truncation()
        self._rows: Batcher[list[list[int]], Array] = Batcher(
            self._run_rows, max_batch=MAX_BATCH, max_wait=MAX_WAIT, size=len, inline_seconds=INLINE_SECONDS
        )
        self._tensors: Batcher[Feeds, Feeds] = Batcher(
            self._run_feeds,
            max_batch=MAX_BATCH,
            max_wait=MAX_WAIT,
            size=self._batch_size,
            key=self._key,
            inline_seconds=INLINE_SECONDS,
        )

    # --- what a backend implements ----------------------------------------------------------------
    def run_graph(self, feeds: Feeds) -> Feeds:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- Runtime --------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.TENSOR}
        if self.spec.task == "embed":
            caps.add(Capability.EMBED)
        return frozenset(caps)

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def context_length(self) -> int:
        return self.spec.max_length or 0

    @property
    def parallel(self) -> int:
        return 4 * MAX_BATCH  # requests may wait here to be batched together

    async def close(self) -> None:
        await self._rows.close()
        await self._tensors.close()
        if self._lane_pool is not None:
            self._lane_pool.shutdown(wait=False)

    def _on_lanes(self, fn: Callable[[Feeds], Feeds], pieces: Sequence[Feeds]) -> list[Feeds]:
        """``fn`` of every piece, the first on this thread and the others on the lane threads at once."""
        if self._lane_pool is None or len(pieces) == 1:
            return [fn(p) for p in pieces]
        futures = [self._lane_pool.submit(fn, p) for p in pieces[1:]]
        first = fn(pieces[0])
        return [first, *(f.result() for f in futures)]

    # --- text -----------------------------------------------------------------------------------------
    def _output(self) -> str:
        return self.spec.outputs[0].name

    def tokenize(self, texts: Sequence[EmbedInput], truncate: bool) -> list[list[int]]:
        if self._tokenizer is None:
            raise RequestRejected("this model takes tensors, not text")
        if len(texts) > MAX_TEXTS:
            raise RequestRejected(f"{len(texts)} inputs in one request; at most {MAX_TEXTS}")
        limit = self.spec.max_length or 512
        strings = [t for t in texts if isinstance(t, str)]
        # One text is encoded on this thread: encode_batch wakes tokenizers' thread pool even for one,
        # which cost 0.2 ms a request under load beside the lanes; without offsets it is 1.6× faster.
        tok = self._tokenizer
        encoded = iter([tok.encode(strings[0])] if len(strings) == 1 else tok.encode_batch_fast(strings))
        rows: list[list[int]] = []
        for t in texts:
            ids = list(next(encoded).ids) if isinstance(t, str) else [int(x) for x in t]
            if not ids:
                raise RequestRejected("an input has no tokens")
            if len(ids) > limit:
                if not truncate:
                    raise RequestRejected(f"an input has {len(ids)} tokens; the model takes {limit}")
                ids = ids[: limit - 1] + ids[-1:]  # keep the closing [SEP]
            rows.append(ids)
        return rows

    def _run_rows(self, requests: Sequence[list[list[int]]]) -> list[Array]:
        rows = [r for req in requests for r in req]
        name = self._output()
        groups = length_pieces([len(r) for r in rows], self.lanes)

        def feeds(group: list[int]) -> Feeds:
            ids, mask = pad_rows([rows[i] for i in group], max(len(rows[i]) for i in group))
            return {"input_ids": ids, "attention_mask": mask}

        if len(groups) == 1:
            out = self.run_graph(feeds(list(range(len(rows)))))[name]
        else:
            parts = self._on_lanes(self.run_graph, [feeds(g) for g in groups])
            first = parts[0][name]
            out = np.empty((len(rows), *first.shape[1:]), dtype=first.dtype)
            for g, part in zip(groups, parts, strict=True):
                out[g] = part[name]
        result: list[Array] = []
        start = 0
        for req in requests:
            result.append(np.asarray(out[start : start + len(req)], dtype=np.float32))
            start += len(req)
        return result

    async def run_text(
        self, texts: Sequence[EmbedInput], truncate: bool, cancel: CancelFlag
    ) -> tuple[Array, int]:
        rows = self.tokenize(texts, truncate)
        if not rows:
            return np.zeros((0, self.spec.outputs[0].shape[-1]), dtype=np.float32), 0
        out = await self._rows.submit(rows, cancel)
        return out, sum(len(r) for r in rows)

    async def embed(self, texts: Sequence[EmbedInput], *, truncate: bool, cancel: CancelFlag) -> Embeddings:
        if self.spec.task != "embed":
            raise RequestRejected("this model does not produce embeddings")
        vectors, tokens = await self.run_text(texts, truncate, cancel)
        return Embeddings(np.ascontiguousarray(vectors, dtype=np.float32), tokens)

    # --- tensors ----------------------------------------------------------------------------------------
    @property
    def tensor_inputs(self) -> tuple[TensorSpec, ...]:
        if self.spec.text:
            return (TensorSpec(TEXT_INPUT, "BYTES", (-1,)),)
        return tuple(s.tensor_spec() for s in self.spec.inputs)

    @property
    def tensor_outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(s.tensor_spec() for s in self.spec.outputs)

    def _batchable(self) -> bool:
        return all(s.shape and s.shape[0] == -1 for s in (*self.spec.inputs, *self.spec.outputs))

    def _batch_size(self, feeds: Feeds) -> int:
        return int(next(iter(feeds.values())).shape[0]) if self._batchable() and feeds else MAX_BATCH

    def _key(self, feeds: Feeds) -> Hashable:
        if not self._batchable():
            return object()  # never merged with another request
        return tuple((k, str(v.dtype), v.shape[1:]) for k, v in sorted(feeds.items()))

    def _run_feeds(self, requests: Sequence[Feeds]) -> list[Feeds]:
        merged = (
            requests[0]
            if len(requests) == 1
            else {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}
        )
        out = self._run_merged(merged)
        if len(requests) == 1:
            return [out]
        result, start = [], 0
        for r in requests:
            n = int(next(iter(r.values())).shape[0])
            result.append({k: v[start : start + n] for k, v in out.items()})
            start += n
        return result

    def _run_merged(self, feeds: Feeds) -> Feeds:
        """One batch of tensors, cut over the lanes when it is batchable and one run of it is slow."""
        rows = int(next(iter(feeds.values())).shape[0]) if feeds and self._batchable() else 1
        pieces = min(self.lanes, rows)
        if pieces <= 1 or rows * self._row_seconds < SPLIT_SECONDS:
            start = time.perf_counter()
            out = self.run_graph(feeds)
            self._row_seconds = (time.perf_counter() - start) / max(rows, 1)
            return out
        bounds = np.linspace(0, rows, pieces + 1).astype(int)
        parts = self._on_lanes(
            self.run_graph, [{k: v[a:b] for k, v in feeds.items()} for a, b in itertools.pairwise(bounds)]
        )
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _check(self, name: str, array: Array, spec: TensorSpec) -> None:
        from ffruntime.tensors import datatype_of

        if datatype_of(array) != spec.datatype:
            raise RequestRejected(
                f"input {name}: datatype {datatype_of(array)}, the model takes {spec.datatype}"
            )
        if len(array.shape) != len(spec.shape) or any(
            d != -1 and d != a for d, a in zip(spec.shape, array.shape, strict=True)
        ):
            raise RequestRejected(
                f"input {name}: shape {list(array.shape)}, the model takes {list(spec.shape)}"
            )

    async def infer(
        self, inputs: Mapping[str, Tensor], cancel: CancelFlag, outputs: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        specs = {s.name: s for s in self.tensor_inputs}
        names = {s.name for s in self.tensor_outputs}
        unknown = sorted(set(inputs) - set(specs))
        if unknown:
            raise RequestRejected(
                f"unknown input(s) {', '.join(unknown)}; the model takes {', '.join(specs)}"
            )
        missing = sorted(set(specs) - set(inputs))
        if missing:
            raise RequestRejected(f"missing input(s) {', '.join(missing)}")
        bad = sorted(set(outputs or ()) - names)
        if bad:
            raise RequestRejected(
                f"unknown output(s) {', '.join(bad)}; the model gives {', '.join(sorted(names))}"
            )
        arrays = {k: to_array(v) for k, v in inputs.items()}
        for k, a in arrays.items():
            self._check(k, a, specs[k])
        if self.spec.text:
            raw = arrays[TEXT_INPUT].reshape(-1)
            try:
                texts = [bytes(x).decode("utf-8") for x in raw]
            except UnicodeDecodeError:
                raise RequestRejected("the text input is not UTF-8") from None
            vectors, _ = await self.run_text(texts, True, cancel)
            result: Feeds = {self._output(): vectors}
        else:
            if any(a.size == 0 for a in arrays.values()) and self._batchable():
                raise RequestRejected("an input is empty")
            result = await self._tensors.submit(arrays, cancel)
        wanted = list(outputs) if outputs else [s.name for s in self.tensor_outputs]
        out_specs = {s.name: s for s in self.tensor_outputs}
        return {n: from_array(np.asarray(result[n]), out_specs[n].datatype) for n in wanted}
