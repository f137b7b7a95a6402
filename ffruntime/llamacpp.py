"""The llama.cpp runtime (llama-cpp-python): chat, completion and embeddings from GGUF weights.

Each loaded model owns ``num_parallel`` slots (a llama context each, sharing the mmapped weights) and
one worker thread per slot; the event loop never runs model code. Jobs wait in one FIFO queue; tokens
come back through an ``asyncio.Queue``. A job checks its :class:`CancelFlag` between tokens, so a
client that goes away stops its generation within one decoding step.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

from ffruntime.prompting import ModelPrompting, build_prompt
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    ChatMessage,
    Done,
    DoneReason,
    Embeddings,
    Event,
    GenerationRequest,
    ParamValue,
    PromptTooLong,
    RequestRejected,
    Token,
)
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef

_default_model_params = getattr(llama_cpp.llama_cpp, "_ff_original_model_params", None) or (
    llama_cpp.llama_cpp.llama_model_default_params
)
setattr(llama_cpp.llama_cpp, "_ff_original_model_params", _default_model_params)  # noqa: B010


def _model_params() -> Any:
    """llama.cpp's defaults, less the CPU "extra" (AMX/repack) buffers unless FF_LLAMA_EXTRA_BUFFERS=1.

    With llama-cpp-python 0.3.36 on AMX CPUs, the extra buffers crash (SIGSEGV) on every multi-token
    batch decode of a Q4_1/Q8_0 model (docs/serving.md); plain CPU buffers work.
    """
    params = _default_model_params()
    if os.environ.get("FF_LLAMA_EXTRA_BUFFERS", "0") != "1":
        params.use_extra_bufts = False
    return params


llama_cpp.llama_cpp.llama_model_default_params = _model_params  # what Llama() calls
_POOLING_MEAN = 1
_SAMPLING: dict[str, tuple[str, type]] = {  # Ollama option → (create_completion argument, type)
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "typical_p": ("typical_p", float),
    "repeat_penalty": ("repeat_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "mirostat": ("mirostat_mode", int),
    "mirostat_tau": ("mirostat_tau", float),
    "mirostat_eta": ("mirostat_eta", float),
    "seed": ("seed", int),
    "num_predict": ("max_tokens", int),
}


@dataclass
class _Job:
    run: Callable[[_Slot, Callable[[object], None]], None]
    emit: Callable[[object], None]
    end: Callable[[], None]
    cancel: CancelFlag


@dataclass
class _Slot:
    path: str
    opts: LoadSettings
    llm: Any = None
    embedder: Any = None
    lora: str | None = None

    def text(self) -> Any:
        if self.llm is None:
            self.llm = llama_cpp.Llama(
                self.path,
                n_ctx=self.opts.num_ctx,
                n_threads=self.opts.n_threads,
                n_threads_batch=self.opts.n_threads,
                lora_path=self.lora,
                verbose=False,
            )
        return self.llm

    def embedding(self, pooled_by_model: bool) -> Any:
        if self.embedder is None:
            self.embedder = llama_cpp.Llama(
                self.path,
                n_ctx=self.opts.num_ctx,
                n_threads=self.opts.n_threads,
                n_threads_batch=self.opts.n_threads,
                embedding=True,
                pooling_type=-1 if pooled_by_model else _POOLING_MEAN,
                verbose=False,
            )
        return self.embedder


@dataclass
class LlamaCppRuntime:
    variant: VariantRef
    files: ModelFiles
    opts: LoadSettings
    metadata: dict[str, str]
    prompting: ModelPrompting
    _capabilities: frozenset[Capability]
    _memory: int
    _jobs: queue.Queue[_Job | None] = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)
    _slots: list[_Slot] = field(default_factory=list)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._capabilities

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def context_length(self) -> int:
        return self.opts.num_ctx

    @property
    def parallel(self) -> int:
        return self.opts.num_parallel

    # --- worker threads -------------------------------------------------------------------------------
    def start(self, slots: list[_Slot]) -> None:
        self._slots = slots
        for i, slot in enumerate(slots):
            t = threading.Thread(target=self._work, args=(slot,), name=f"llamacpp-{self.variant.name}-{i}")
            t.daemon = True
            t.start()
            self._threads.append(t)

    def _work(self, slot: _Slot) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if not job.cancel.is_set:  # a request cancelled while queued never runs
                    job.run(slot, job.emit)
            except BaseException as exc:  # handed to the request, never kills the worker
                job.emit(exc)
            finally:
                job.end()

    async def _submit(
        self, run: Callable[[_Slot, Callable[[object], None]], None], cancel: CancelFlag
    ) -> AsyncIterator[object]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[object] = asyncio.Queue()
        end = object()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(out.put_nowait, item)

        self._jobs.put(_Job(run, emit, lambda: emit(end), cancel))
        try:
            while True:
                item = await out.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()

    async def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

        def join() -> None:
            for t in self._threads:
                t.join()

        await asyncio.to_thread(join)
        for slot in self._slots:
            for llm in (slot.llm, slot.embedder):
                if llm is not None:
                    llm.close()
            slot.llm = slot.embedder = None

    # --- text ---------------------------------------------------------------------------------------
    def _sampling(self, options: Mapping[str, ParamValue]) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        for key, (arg, kind) in _SAMPLING.items():
            if key not in options:
                continue
            value = options[key]
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or (kind is int and value != int(value)):  # type: ignore[arg-type]
                raise RequestRejected(f"option {key} must be {'an integer' if kind is int else 'a number'}")
            kw[arg] = kind(value)
        if "max_tokens" in kw and int(kw["max_tokens"]) < 0:
            kw["max_tokens"] = -1
        if kw.get("seed") is not None and int(kw["seed"]) < 0:
            del kw["seed"]
        return kw

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        try:
            prompt, template_stops = build_prompt(request, self.prompting)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None
        stop_opt = request.options.get("stop", [])
        if isinstance(stop_opt, str):
            stop_opt = [stop_opt]
        if not isinstance(stop_opt, list) or not all(isinstance(x, str) for x in stop_opt):
            raise RequestRejected("option stop must be a list of strings")
        stops = list(stop_opt)
        stops += [s for s in template_stops if s and s not in stops]
        kw = self._sampling(request.options)
        fmt = request.format
        if fmt == "json":
            grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        elif isinstance(fmt, dict):
            try:
                grammar = LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
            except (ValueError, RuntimeError, KeyError, TypeError) as exc:
                raise RequestRejected(f"cannot use this JSON schema as a grammar: {exc}") from None
        else:
            grammar = None
        cancel = request.cancel
        context = list(request.context)
        suffix = request.suffix

        def run(slot: _Slot, emit: Callable[[object], None]) -> None:
            llm = slot.text()
            n_vocab = llm.n_vocab()
            if any(not 0 <= t < n_vocab for t in context):
                raise RequestRejected(f"context holds token ids outside the vocabulary (0..{n_vocab - 1})")
            tokens = context + llm.tokenize(prompt.encode("utf-8"), add_bos=not context, special=True)
            if len(tokens) >= llm.n_ctx():
                raise PromptTooLong(
                    f"the prompt is {len(tokens)} tokens; the model's context is {llm.n_ctx()} (num_ctx)"
                )
            t0 = time.perf_counter_ns()
            t_first = 0
            pieces: list[str] = []
            reason: DoneReason = "stop"
            stream: Iterator[Any] = llm.create_completion(
                tokens if context else prompt,
                suffix=suffix,
                stop=stops,
                grammar=grammar,
                stream=True,
                **kw,
            )
            try:
                for chunk in stream:
                    if cancel.is_set:
                        reason = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    text = choice["text"]
                    if text:
                        if not t_first:
                            t_first = time.perf_counter_ns()
                        pieces.append(text)
                        emit(Token(text))
                    if choice.get("finish_reason"):
                        reason = "length" if choice["finish_reason"] == "length" else "stop"
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            t_end = time.perf_counter_ns()
            t_first = t_first or t_end
            n_out = max(len(pieces), llm.n_tokens - len(tokens))
            out_tokens = llm.tokenize("".join(pieces).encode("utf-8"), add_bos=False, special=True)
            emit(Done(reason, len(tokens), n_out, t_first - t0, t_end - t_first, (*tokens, *out_tokens)))

        return self._events(run, cancel)

    async def _events(
        self, run: Callable[[_Slot, Callable[[object], None]], None], cancel: CancelFlag
    ) -> AsyncIterator[Event]:
        async for item in self._submit(run, cancel):
            assert isinstance(item, Token | Done)
            yield item

    # --- embeddings ---------------------------------------------------------------------------------
    async def embed(self, texts: Sequence[str], *, truncate: bool, cancel: CancelFlag) -> Embeddings:
        arch = self.metadata.get("general.architecture", "")
        pooled = f"{arch}.pooling_type" in self.metadata
        result: list[Embeddings] = []

        def run(slot: _Slot, emit: Callable[[object], None]) -> None:
            llm = slot.embedding(pooled)
            n_ctx = llm.n_ctx()
            vectors: list[list[float]] = []
            n_tokens = 0
            for text in texts:
                if cancel.is_set:
                    return
                toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
                if len(toks) > n_ctx and not truncate:
                    raise PromptTooLong(
                        f"an input is {len(toks)} tokens; the context is {n_ctx} (truncate=false)"
                    )
                n_tokens += min(len(toks), n_ctx)
                vec = llm.embed(text, normalize=True, truncate=True)
                vectors.append([float(x) for x in vec])
            result.append(Embeddings(vectors, n_tokens))

        async for _ in self._submit(run, cancel):
            pass
        if not result:
            raise asyncio.CancelledError()
        return result[0]


def _estimate_memory(files: ModelFiles, meta: Mapping[str, str], opts: LoadSettings) -> int:
    declared = files.annotations.get("io.ferrousforge.min-memory-bytes")
    weights = sum(p.stat().st_size for p in files.weights)
    arch = meta.get("general.architecture", "")
    try:
        layers = int(meta.get(f"{arch}.block_count", "0"))
        embd = int(meta.get(f"{arch}.embedding_length", "0"))
        heads = max(1, int(meta.get(f"{arch}.attention.head_count", "1")))
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", str(heads)))
    except ValueError:
        layers = embd = heads = kv_heads = 0
    kv = 2 * layers * opts.num_ctx * (embd * kv_heads // heads) * 2  # K and V, f16
    estimate = weights + opts.num_parallel * (kv + 64 * 1024 * 1024)
    return max(estimate, int(declared)) if declared and declared.isdigit() else estimate


def _jinja(
    meta: Mapping[str, str], llm: Any
) -> Callable[[list[dict[str, str]]], tuple[str, list[str]]] | None:
    template = meta.get("tokenizer.chat_template")
    if not template:
        return None

    def token(key: str) -> str:
        tid = meta.get(key)
        return llm._model.token_get_text(int(tid)) if tid is not None and tid.lstrip("-").isdigit() else ""

    eos, bos = token("tokenizer.ggml.eos_token_id"), token("tokenizer.ggml.bos_token_id")
    fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos, add_generation_prompt=True)

    def render(messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        out = fmt(messages=messages)  # type: ignore[arg-type]
        stop = out.stop if isinstance(out.stop, list) else [out.stop] if out.stop else []
        return out.prompt, [s for s in stop if s]

    return render


async def load(variant: VariantRef, files: ModelFiles, opts: LoadSettings) -> LlamaCppRuntime:
    path = str(files.weights[0])
    if not (files.files.get("model.gguf") or files.weights[0]).is_file():
        raise FileNotFoundError(path)
    lora = str(files.adapters[0]) if files.adapters else None
    embed_only = variant.task == "embed"
    slots = [_Slot(path, opts, lora=lora) for _ in range(opts.num_parallel)]
    first = slots[0]

    def _load() -> Any:
        return first.embedding(True) if embed_only else first.text()

    llm = await asyncio.to_thread(_load)
    meta = {str(k): str(v) for k, v in dict(llm.metadata).items()}
    if not embed_only:
        for slot in slots[1:]:
            await asyncio.to_thread(slot.text)
    caps = {Capability.EMBED} if embed_only else {Capability.GENERATE, Capability.EMBED}
    if not embed_only and (files.template or meta.get("tokenizer.chat_template")):
        caps.add(Capability.CHAT)
    prompting = ModelPrompting(
        template=files.template,
        system=files.system,
        messages=[ChatMessage(str(m.get("role", "")), str(m.get("content", ""))) for m in files.messages],
        jinja=None if embed_only else _jinja(meta, llm),
    )
    rt = LlamaCppRuntime(
        variant, files, opts, meta, prompting, frozenset(caps), _estimate_memory(files, meta, opts)
    )
    rt.start(slots)
    return rt
