"""Chat and completion on ONNX Runtime GenAI: the runtime of ``onnxruntime`` chat/generate variants.

A loaded variant is one ``og.Model`` (weights and sessions shared) and ``num_parallel`` worker threads;
each request runs on its own ``og.Generator`` (its own KV cache) in one worker, so requests run
concurrently, and the event loop never runs model code. Tokens come back through an ``asyncio.Queue``,
at most ``LOOKAHEAD`` ahead of the reader; the job checks its :class:`CancelFlag` between decoding steps.

Why not batched: GenAI 0.18's continuous batching (``og.Engine`` with ``engine.dynamic_batching``) needs
a paged-attention model, which its builder makes only for CUDA fp16/bf16 (and WebGPU); on the CPU the
Engine has only a static batch scheduler without stop strings or per-request seeds (docs/serving.md).

Prompts come from :mod:`ffruntime.prompting` (the Modelfile TEMPLATE, else the model's own chat
template). Options: ``temperature`` (0: greedy), ``top_k``, ``top_p``, ``seed``, ``repeat_penalty``,
``num_predict`` (none: until the end-of-sequence token or a full context), ``stop``. A JSON output
constraint (``format``) is GenAI's guidance (the llguidance it embeds, the engine that constrains
llama.cpp too) with the JSON schema of :func:`ffruntime.constraints.constraint_schema`, checked by
:func:`~ffruntime.constraints.guidance_grammar` first (the same 400 for a feature it cannot enforce); a
forced tool call is refused. Imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime_genai as og

from ffruntime.constraints import bounded, constraint_schema, guidance_grammar
from ffruntime.errors import RuntimeFailure
from ffruntime.genai_model import GenAIModel, open_model
from ffruntime.options import OPTIONS, number
from ffruntime.prompting import ModelfilePrompt, ModelPrompting, build_prompt
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    Constraint,
    Done,
    DoneReason,
    Event,
    ForcedToolCall,
    GenerationRequest,
    ParamValue,
    PromptTooLong,
    RequestRejected,
    Token,
)
from ffruntime.settings import LoadSettings
from ffruntime.stops import StopScanner, stop_strings
from registry.artifact import ModelFiles, VariantRef

_SEARCH: dict[str, str] = {  # Ollama option → GenAI search option
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "repeat_penalty": "repetition_penalty",
    "seed": "random_seed",
    "num_predict": "num_predict",
}
# The sampling stages GenAI lacks: a request may only ask for their neutral value.
_NEUTRAL: dict[str, int | float] = {
    name: o.neutral for name, o in OPTIONS.items() if o.neutral is not None and name not in _SEARCH
}
# How many tokens a generator may run ahead of its reader: a slow client or a busy event loop makes the
# worker wait instead of decoding on, so a cancel takes effect within this many steps.
LOOKAHEAD = 8


@dataclass(frozen=True)
class _Plan:
    tokens: list[int]
    search: dict[str, Any]
    num_predict: int | None
    stops: list[str]
    guidance: str | None  # a JSON schema


def search_options(options: Mapping[str, ParamValue]) -> tuple[dict[str, Any], int | None]:
    """GenAI search options and ``num_predict`` (None: no limit) from a request's options."""
    for key, neutral in _NEUTRAL.items():
        if key in options and number(key, options[key]) != neutral:
            raise RequestRejected(
                f"option {key} is not available on ONNX Runtime GenAI variants "
                "(it has temperature, top_k, top_p, repeat_penalty and seed)"
            )
    kw: dict[str, Any] = {arg: number(key, options[key]) for key, arg in _SEARCH.items() if key in options}
    num_predict = kw.pop("num_predict", None)
    if num_predict is not None and num_predict < 0:
        num_predict = None  # Ollama's -1: no limit
    if kw.get("random_seed") is not None and kw["random_seed"] < 0:
        del kw["random_seed"]
    temperature = kw.get("temperature", 0.8)  # Ollama's default
    kw["do_sample"] = temperature > 0 and kw.get("top_k") != 1
    if not kw["do_sample"]:
        kw.pop("temperature", None)
    return kw, num_predict


@dataclass
class _Job:
    run: Callable[[Callable[[object], None]], None]
    emit: Callable[[object], None]
    end: Callable[[], None]
    cancel: CancelFlag


@dataclass
class GenAIRuntime:
    variant: VariantRef
    opts: LoadSettings
    model: GenAIModel
    prompting: ModelPrompting
    folder: Path
    _capabilities: frozenset[Capability]
    _memory: int
    _jobs: queue.Queue[_Job | None] = field(default_factory=queue.Queue)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._capabilities

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def context_length(self) -> int:
        return min(self.opts.num_ctx, self.model.context_length)

    @property
    def parallel(self) -> int:
        return max(1, self.opts.num_parallel)  # 0 (automatic): one

    def start(self) -> None:
        for i in range(self.parallel):
            t = threading.Thread(target=self._work, name=f"genai-{self.variant.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if not job.cancel.is_set:  # a request cancelled while queued never runs
                    job.run(job.emit)
            except BaseException as exc:  # handed to the request, never kills the worker
                job.emit(exc)
            finally:
                job.end()

    async def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

        def join() -> None:
            for t in self._threads:
                t.join()

        await asyncio.to_thread(join)
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- requests -------------------------------------------------------------------------------------
    @staticmethod
    def _guidance(constraint: Constraint) -> str | None:
        """The JSON schema GenAI's guidance (llguidance) constrains decoding to; None for free text."""
        if isinstance(constraint, ForcedToolCall):
            raise RequestRejected(
                "a forced tool call (tool_choice) is llama.cpp's; ONNX Runtime GenAI variants take "
                "format (a JSON schema)"
            )
        schema = constraint_schema(constraint)
        if schema is None:
            return None
        guidance_grammar(constraint)
        return json.dumps(bounded(schema))

    def _plan(self, request: GenerationRequest) -> _Plan:
        if request.suffix:
            raise RequestRejected("suffix (fill-in-the-middle) is not available on ONNX Runtime GenAI")
        guidance = self._guidance(request.constraint)
        if request.logprobs:
            raise RequestRejected("logprobs are not available on ONNX Runtime GenAI variants")
        try:
            prompt, template_stops = build_prompt(request, self.prompting)
        except ValueError as exc:
            raise RequestRejected(str(exc)) from None
        search, num_predict = search_options(request.options)
        vocab = self.model.vocab_size or 1 << 31
        context = list(request.context)
        if any(not 0 <= t < vocab for t in context):
            raise RequestRejected(f"context holds token ids outside the vocabulary (0..{vocab - 1})")
        tokens = context + self.model.encode(prompt)
        if not tokens:
            raise RequestRejected("the prompt is empty")
        if len(tokens) >= self.context_length:
            raise PromptTooLong(
                f"the prompt is {len(tokens)} tokens; the model's context is {self.context_length} (num_ctx)"
            )
        return _Plan(tokens, search, num_predict, stop_strings(request.options, template_stops), guidance)

    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        plan = self._plan(request)
        cancel = request.cancel
        return self._events(lambda emit: self._run(plan, cancel, emit), cancel)

    def _run(self, plan: _Plan, cancel: CancelFlag, emit: Callable[[object], None]) -> None:
        m = self.model
        limit = self.context_length
        if plan.num_predict is not None:
            limit = min(limit, len(plan.tokens) + plan.num_predict)
        params = og.GeneratorParams(m.model)
        params.set_search_options(max_length=limit, **plan.search)
        t0 = time.perf_counter_ns()
        try:
            if plan.guidance is not None:
                params.set_guidance("json_schema", plan.guidance)
            gen = og.Generator(m.model, params)  # a bad schema may only fail here
        except RuntimeError as exc:
            if plan.guidance is None:
                raise RuntimeFailure(f"ONNX Runtime GenAI cannot start a generator: {exc}") from None
            raise RequestRejected(f"cannot constrain decoding to this JSON schema: {exc}") from None
        gen.append_tokens(np.asarray(plan.tokens, dtype=np.int32))
        t_first = time.perf_counter_ns()
        stream = m.tokenizer.create_stream()
        scanner = StopScanner(plan.stops)
        out: list[int] = []
        reason: DoneReason = "length"
        while True:
            if cancel.is_set:
                reason = "cancelled"
                break
            if gen.is_done() or len(plan.tokens) + len(out) >= limit:
                break
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            if token in m.eos_ids:
                reason = "stop"
                break
            out.append(token)
            if text := scanner.feed(stream.decode(token)):
                emit(Token(text))
            if scanner.stopped:
                reason = "stop"
                break
        if tail := scanner.flush():
            emit(Token(tail))
        t_end = time.perf_counter_ns()
        del gen
        emit(Done(reason, len(plan.tokens), len(out), t_first - t0, t_end - t_first, (*plan.tokens, *out),
                  scanner.matched if reason == "stop" else None))

    async def _events(
        self, run: Callable[[Callable[[object], None]], None], cancel: CancelFlag
    ) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[object] = asyncio.Queue()
        end = object()

        ahead = threading.Semaphore(LOOKAHEAD)

        def emit(item: object) -> None:
            if isinstance(item, Token):
                while not ahead.acquire(timeout=0.05) and not cancel.is_set:
                    pass
            loop.call_soon_threadsafe(out.put_nowait, item)

        self._jobs.put(_Job(run, emit, lambda: emit(end), cancel))
        try:
            while True:
                item = await out.get()
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Token | Done)
                if isinstance(item, Token):
                    ahead.release()
                yield item
        finally:
            cancel.set()


def _folder(files: ModelFiles) -> Path:
    """The variant's files under their layer paths (symlinks to the store's blobs), as GenAI reads them."""
    folder = Path(tempfile.mkdtemp(prefix="ff-genai-"))
    try:
        for filepath, blob in files.files.items():
            link = folder / filepath
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(blob)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _estimate_memory(files: ModelFiles, model: GenAIModel, opts: LoadSettings) -> int:
    """Weights plus each sequence's KV cache (float32 on the CPU), from genai_config.json's decoder."""
    declared = files.annotations.get("io.ferrousforge.min-memory-bytes", "")
    weights = sum(p.stat().st_size for p in files.weights)
    try:
        cfg = json.loads((model.folder / "genai_config.json").read_text())["model"]["decoder"]
        keys = ("num_hidden_layers", "num_key_value_heads", "head_size")
        layers, kv_heads, head = (int(cfg[k]) for k in keys)
    except (OSError, ValueError, KeyError, TypeError):
        layers = kv_heads = head = 0
    kv = 2 * layers * min(opts.num_ctx, model.context_length) * kv_heads * head * 4
    estimate = weights + max(1, opts.num_parallel) * (kv + 64 * 1024 * 1024)
    return max(estimate, int(declared)) if declared.isdigit() else estimate


async def load(variant: VariantRef, files: ModelFiles, opts: LoadSettings) -> GenAIRuntime:
    folder = _folder(files)
    device = opts.device if opts.device != "cpu" else variant.device
    try:
        model = await asyncio.to_thread(open_model, folder, opts.with_(device=device))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    prompting = model.prompting(ModelfilePrompt.of(files.template, files.system, files.messages))
    caps = {Capability.GENERATE}
    if prompting.chats:
        caps.add(Capability.CHAT)
    rt = GenAIRuntime(
        variant, opts, model, prompting, folder, frozenset(caps), _estimate_memory(files, model, opts)
    )
    rt.start()
    return rt


with contextlib.suppress(Exception):  # GenAI's telemetry is off: a server makes no calls of its own
    og.disable_telemetry_events()
