"""The llama.cpp runtime: chat, completion and embeddings from GGUF weights, on llama.cpp's C API.

One model, one context with ``num_parallel`` sequence slots of ``num_ctx`` tokens each (``num_parallel``
0: :func:`ffruntime.settings.parallel_slots` from the weights, the KV cache of a slot and the memory
budget), driven by one :class:`~ffruntime.llamacpp.engine.Engine` thread that decodes every running
sequence in one batch (continuous batching, prefix reuse, chunked prefill; see that module). The event
loop never runs model code: requests are prepared (prompt rendered, tokenized, sampler and output
constraint built) in a worker thread, events come back through an ``asyncio.Queue``. Model and context
parameters come from :mod:`ffruntime.llamacpp.library`, as for the verify stage's
:class:`~ffruntime.llamacpp.eval.LlamaEval`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ffruntime.constraints import guidance_grammar
from ffruntime.errors import RuntimeFailure
from ffruntime.gotemplate import TemplateError
from ffruntime.llamacpp.embeddings import Embedder, EmbedJob
from ffruntime.llamacpp.engine import END, Engine, Job
from ffruntime.llamacpp.guide import Guides
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
from ffruntime.llamacpp.media import MARKER, MediaPrompt, Projector
from ffruntime.llamacpp.outbox import Inbox
from ffruntime.llamacpp.sampling import Sampler, sampling
from ffruntime.llamacpp.threads import Threads, most_threads
from ffruntime.llamacpp.vocab import Vocab, gguf_prompting
from ffruntime.prompting import ModelfilePrompt, ModelPrompting, build_prompt
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    Embeddings,
    EmbedInput,
    Event,
    GenerationRequest,
    Media,
    MediaRejected,
    PromptTooLong,
    RequestRejected,
)
from ffruntime.settings import LoadSettings, available_memory, parallel_slots
from ffruntime.stops import stop_strings
from registry.artifact import ModelFiles, VariantRef

N_BATCH = 512
EMBED_PARALLEL = 8  # requests an embedding-only model takes at once (their inputs share batches)
PREFILL_CHUNK = N_BATCH  # most prompt tokens a step reads beside generating sequences (pacing.Prefill)


@dataclass
class _Loaded:
    """What llama.cpp holds for one model; freed by :meth:`free`."""

    model: Any
    vocab: Vocab
    meta: dict[str, str]
    model_params: Any
    ctx: Any = None
    context_params: Any = None
    loras: tuple[Any, ...] = ()  # every ADAPTER, in the Modelfile's order
    n_ctx_seq: int = 0
    n_seq: int = 1  # sequence slots

    def free(self) -> None:
        free_handles(self.ctx, self.loras, self.model)
        self.ctx = self.model = None
        self.loras = ()


class LlamaCppRuntime:
    def __init__(
        self,
        variant: VariantRef,
        files: ModelFiles,
        settings: LoadSettings,
        loaded: _Loaded,
        engine: Engine,
        embedder: Embedder,
        prompting: ModelPrompting,
        capabilities: frozenset[Capability],
    ) -> None:
        self.variant, self.files, self.settings = variant, files, settings
        self.llama, self.engine, self.embedder = loaded, engine, embedder
        self.prompting = prompting
        self.guides = Guides(loaded.vocab)  # output constraints (llguidance's tokenizer: when first needed)
        self._capabilities = capabilities
        self._memory = estimate_memory(files, loaded.meta, settings.with_(num_parallel=loaded.n_seq))
        self.projector: Projector | None = None  # images/audio (a variant with a projector layer)

    @property
    def metadata(self) -> dict[str, str]:
        return self.llama.meta

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self._capabilities

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def context_length(self) -> int:
        return self.settings.num_ctx

    @property
    def parallel(self) -> int:
        """Sequence slots of a text model; an embedding model batches this many requests together."""
        return len(self.engine.slots) if self.llama.ctx else max(self.settings.num_parallel, EMBED_PARALLEL)

    def stats(self) -> dict[str, float]:
        """Engine counters since load (batches, batch sizes, prefix reuse, embedding batches) and levels:
        the thread count now, the p50/p99 inter-token latency of the last few thousand tokens."""
        engine = self.engine
        out: dict[str, float] = {k: int(v) for k, v in vars(engine.stats).items()}
        p50, p99 = engine.gaps.percentiles()
        out.update(embed_batches=self.embedder.batches, embed_inputs=self.embedder.inputs,
                   running=engine.busy, slots=len(engine.slots), threads=engine.threads.current,
                   thread_switches=engine.threads.switches, itl_p50_seconds=p50, itl_p99_seconds=p99)
        if self.projector is not None:
            out.update(media_encoded=self.projector.encoded, media_cache_hits=self.projector.cache_hits)
        return out

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.close)
        if self.projector is not None:
            await asyncio.to_thread(self.projector.close)
        self.embedder.close()
        self.llama.free()

    # --- text ---------------------------------------------------------------------------------------
    def prepare(self, request: GenerationRequest, emit: Callable[[object], None]) -> Job:
        """The request as an engine job: prompt rendered and tokenized, sampler built (any thread)."""
        vocab = self.llama.vocab
        media = self._media_of(request)
        try:
            prompt, template_stops = build_prompt(_with_markers(request) if media else request,
                                                  self.prompting)
        except (ValueError, TemplateError) as exc:
            raise RequestRejected(str(exc)) from None
        stops = stop_strings(request.options, template_stops)
        s = sampling(request.options)
        grammar = guidance_grammar(request.constraint)
        context = list(request.context)
        if any(not 0 <= t < vocab.n_tokens for t in context):
            raise RequestRejected(f"context holds token ids outside the vocabulary (0..{vocab.n_tokens - 1})")
        mprompt: MediaPrompt | None = None
        if media:
            if request.suffix:
                raise RequestRejected("a request with images or audio takes no suffix")
            assert self.projector is not None
            bos = vocab.text(vocab.bos) if vocab.adds_bos and vocab.bos >= 0 else ""
            add = not context and not (bos and prompt.startswith(bos))
            mprompt = self.projector.prompt(prompt, media, add_special=add, model_name=self.variant.name)
            tokens = mprompt.after(context)
        else:
            tokens = context + vocab.prompt_tokens(prompt, add_special=not context)
        try:
            return self._job(request, prompt, tokens, stops, s, grammar, emit, mprompt)
        except BaseException:
            if mprompt is not None:
                mprompt.close()
            raise

    def _job(self, request: GenerationRequest, prompt: str, tokens: list[int], stops: list[str], s: Any,
             grammar: str | None, emit: Callable[[object], None], mprompt: MediaPrompt | None) -> Job:
        vocab, llama, context = self.llama.vocab, self.llama, list(request.context)
        if request.suffix:
            fim = vocab.fim()
            if fim is None:
                raise RequestRejected(f"{self.variant.name} has no fill-in-the-middle tokens: no suffix")
            head = [vocab.bos] if vocab.adds_bos and not context else []
            body = context + vocab.tokenize(prompt, add_special=False, parse_special=True)
            suffix = vocab.tokenize(request.suffix, add_special=False, parse_special=True)
            tokens = [*head, fim[0], *body, fim[1], *suffix, fim[2]]
        if not tokens:
            raise RequestRejected("the prompt is empty")
        limit = min(s.num_ctx, llama.n_ctx_seq) if s.num_ctx > 0 else llama.n_ctx_seq
        if len(tokens) >= limit:
            raise PromptTooLong(f"the prompt is {len(tokens)} tokens; the context is {limit} (num_ctx)")
        guide = self.guides.guide(grammar) if grammar is not None else None
        sampler = Sampler(vocab.n_tokens, s)
        top = max(0, min(int(request.top_logprobs), 20))
        return Job(tokens, sampler, stops, s.num_predict if s.num_predict >= 0 else -1, limit, emit,
                   request.cancel, logprobs=request.logprobs, top_logprobs=top, media=mprompt, guide=guide)

    def _media_of(self, request: GenerationRequest) -> list[Media]:
        """The request's images and clips in prompt order; a model without a projector refuses any."""
        media = list(request.all_media())
        if media and self.projector is None:
            kinds = " and ".join(sorted({"images" if m.kind == "image" else "audio" for m in media}))
            raise MediaRejected(f"this model takes no {kinds}: it has no multimodal projector")
        return media

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        if Capability.GENERATE not in self._capabilities:
            raise RequestRejected(f"{self.variant.name} does not generate text")
        loop = asyncio.get_running_loop()
        events = Inbox()

        def emit(item: object) -> None:
            loop.call_soon_threadsafe(events.put, item)

        job = await asyncio.to_thread(self.prepare, request, emit)
        job.loop, job.put = loop, events.put  # the engine posts a step's events together
        try:
            self.engine.submit(job)
        except BaseException:
            job.sampler.close()
            raise
        try:
            while (item := await events.get()) is not END:
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            request.cancel.set()  # a consumer that stops early ends the sequence at the next step

    # --- embeddings ---------------------------------------------------------------------------------
    def _embed_tokens(self, texts: Sequence[EmbedInput], truncate: bool) -> list[list[int]]:
        vocab, n_ctx = self.llama.vocab, self.embedder.n_ctx
        out = []
        for text in texts:
            if isinstance(text, str):
                toks = vocab.tokenize(text, add_special=True, parse_special=True)
            else:
                toks = [int(t) for t in text]
                if any(not 0 <= t < vocab.n_tokens for t in toks):
                    raise RequestRejected(f"input token ids outside the vocabulary (0..{vocab.n_tokens - 1})")
            if not toks:
                raise RequestRejected("an input is empty")
            if len(toks) > n_ctx:
                if not truncate:
                    raise PromptTooLong(f"an input is {len(toks)} tokens, over the context of {n_ctx}")
                toks = toks[:n_ctx]
            out.append(toks)
        return out

    async def embed(self, texts: Sequence[EmbedInput], *, truncate: bool, cancel: CancelFlag) -> Embeddings:
        inputs = await asyncio.to_thread(self._embed_tokens, texts, truncate)
        future: concurrent.futures.Future[Embeddings] = concurrent.futures.Future()
        self.embedder.submit(EmbedJob(inputs, cancel, future))
        self.engine.wake()
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.CancelledError:
            raise asyncio.CancelledError() from None
        finally:
            cancel.set()


def _with_markers(request: GenerationRequest) -> GenerationRequest:
    """The request with a media marker per item before the text of its prompt or message (where
    Ollama and llama-server put images that the text does not place)."""
    def marked(text: str, n: int) -> str:
        return MARKER * n + text if n else text

    msgs = request.messages
    return dataclasses.replace(
        request, prompt=marked(request.prompt, len(request.media)),
        messages=[dataclasses.replace(m, content=marked(m.content, len(m.media))) for m in msgs]
        if msgs is not None else None,
    )


def kv_per_slot(meta: Mapping[str, str], num_ctx: int) -> int:
    """Bytes of one sequence slot's KV cache (K and V, f16) at ``num_ctx`` tokens."""
    arch = meta.get("general.architecture", "")
    try:
        layers = int(meta.get(f"{arch}.block_count", "0"))
        embd = int(meta.get(f"{arch}.embedding_length", "0"))
        heads = max(1, int(meta.get(f"{arch}.attention.head_count", "1")))
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", str(heads)))
    except ValueError:
        layers = embd = heads = kv_heads = 0
    return 2 * layers * num_ctx * (embd * kv_heads // heads) * 2


def estimate_memory(files: ModelFiles, meta: Mapping[str, str], opts: LoadSettings) -> int:
    declared = files.annotations.get("io.ferrousforge.min-memory-bytes")
    weights = sum(p.stat().st_size for p in files.weights)
    kv = kv_per_slot(meta, opts.num_ctx)
    estimate = weights + max(1, opts.num_parallel) * kv + 128 * 1024 * 1024  # + compute and embedding buffers
    return max(estimate, int(declared)) if declared and declared.isdigit() else estimate


def slots_for(files: ModelFiles, meta: Mapping[str, str], opts: LoadSettings) -> int:
    """Sequence slots: ``num_parallel``, or when it is 0 :func:`parallel_slots` for these weights."""
    if opts.num_parallel > 0:
        return opts.num_parallel
    weights = sum(p.stat().st_size for p in files.weights)
    return parallel_slots(weights, kv_per_slot(meta, opts.num_ctx), opts.memory_budget or available_memory())


def _open(path: Any, files: ModelFiles, opts: LoadSettings, text: bool) -> _Loaded:
    """Load the weights (and LoRA) and, for a text model, the batching context (worker thread)."""
    lc = binding()
    mparams = model_params(opts)
    model = load_model(path, mparams)
    loaded = _Loaded(model, Vocab(model), {}, mparams)
    try:
        loaded.meta = loaded.vocab.metadata()
        for adapter in files.adapters:
            loaded.loras = (*loaded.loras, lora_adapter(model, adapter, path))
        if text:
            n_seq = loaded.n_seq = slots_for(files, loaded.meta, opts)
            loaded.context_params = context_params(
                opts, n_ctx=opts.num_ctx * n_seq, n_batch=N_BATCH, n_ubatch=N_BATCH, n_seq_max=n_seq
            )
            with captured_log() as log:
                loaded.ctx = lc.llama_init_from_model(model, loaded.context_params)
            if not loaded.ctx:
                raise RuntimeFailure(f"llama.cpp cannot create a context for {path}: {log_tail(log)}")
            attach_lora(loaded.ctx, loaded.loras, path)
            loaded.n_ctx_seq = min(int(lc.llama_n_ctx_seq(loaded.ctx)), opts.num_ctx)
    except BaseException:
        loaded.free()
        raise
    return loaded


def _option(opts: LoadSettings, key: str, default: int) -> int:
    value = opts.options.get(key)
    return int(value) if value is not None and str(value).isdigit() and int(value) > 0 else default


async def load(variant: VariantRef, files: ModelFiles, opts: LoadSettings) -> LlamaCppRuntime:
    path = files.weights[0]
    if not path.is_file():
        raise FileNotFoundError(str(path))
    text = variant.task != "embed"
    loaded = await asyncio.to_thread(_open, path, files, opts, text)
    meta = loaded.meta
    arch = meta.get("general.architecture", "")
    n_train = int(binding().llama_model_n_ctx_train(loaded.model))
    threads = Threads(most_threads(opts))
    embedder = Embedder(
        loaded.model, opts, n_ctx=min(opts.num_ctx, n_train) if n_train > 0 else opts.num_ctx,
        pooled_by_model=f"{arch}.pooling_type" in meta, loras=loaded.loras, path=path, threads=threads,
    )
    engine = Engine(
        loaded.ctx, loaded.vocab, n_slots=loaded.n_seq, n_batch=N_BATCH,
        prefill_chunk=_option(opts, "prefill_chunk", PREFILL_CHUNK), threads=threads, name=variant.name,
        side_work=embedder,
    )
    prompting = gguf_prompting(loaded.vocab, ModelfilePrompt.of(files.template, files.system, files.messages))
    caps = {Capability.EMBED}
    projector = None
    if text:
        caps.add(Capability.GENERATE)
        if prompting.chats:
            caps.add(Capability.CHAT)
        if files.projector is not None:
            try:
                projector = await asyncio.to_thread(
                    Projector, files.projector, loaded.model, int(binding().llama_model_n_embd(loaded.model)),
                    threads=opts.n_threads, limits=opts.media, wake=engine.wake)
            except BaseException:
                await asyncio.to_thread(engine.close)
                embedder.close()
                loaded.free()
                raise
            caps |= {Capability.VISION} if projector.vision else set()
            caps |= {Capability.AUDIO} if projector.audio else set()
    rt = LlamaCppRuntime(variant, files, opts, loaded, engine, embedder, prompting, frozenset(caps))
    rt.projector = projector
    return rt
