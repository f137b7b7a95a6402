"""The verify stage: does a compiled GGUF load, and how close is it to its reference (usually the f16)?

For a text model it measures, through llama.cpp:

- ``perplexity`` of the model on a fixed English paragraph (one decode of all positions);
- with a ``reference``: ``agreement``, the fraction of positions where the greedy next token equals
  the reference's, and ``perplexity_ratio`` (variant / reference);
- ``sample``: the greedy answer to ``prompt`` (default :data:`DEFAULT_PROMPT`), so a human can see at a
  glance whether the variant still talks sense. The prompt is rendered and tokenized by
  :mod:`ffruntime.prompting` exactly as ``ff serve`` does for that question (with the Modelfile's
  TEMPLATE, else the GGUF's own chat template); a template that cannot render it is an error.

For an embedding model (a GGUF with a pooling type, e.g. BERT) ``agreement`` is the mean cosine
similarity to the reference's embeddings of :data:`EMBED_SENTENCES`, and there is no perplexity.

Each file's pass over the text is kept (per file and text) and made once, under a lock per file, so a
build evaluates its reference once even when it verifies its variants side by side (one thread each,
:func:`ffbuild.stages.verify.run`): a variant measures itself first and then waits for the reference's
pass if another thread is still making it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import math
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from ffbuild.stages.errors import StageError, VerifyError
from ffbuild.stages.gguf_info import GGUFInfo, read_gguf_info
from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.eval import FloatArray, LlamaEval
from ffruntime.llamacpp.threads import Threads
from ffruntime.llamacpp.vocab import gguf_prompting
from ffruntime.prompting import ChatTemplateError, ModelfilePrompt, question_prompt
from ffruntime.settings import LoadSettings, available_cores, default_threads

DEFAULT_TEXT = (
    "The river rises in the hills to the north of the town and runs south through a wide valley of farms "
    "and small villages. In spring the water is high and fast, and the old stone bridge near the market "
    "is sometimes closed for a few days. Most of the year, however, the river is calm. Children swim in "
    "it during the summer, and in the autumn people walk along its banks to watch the leaves change "
    "colour. The town council has planted new trees along the path, and a small museum next to the "
    "bridge explains how the mills once used the river to grind grain and saw wood."
)
DEFAULT_PROMPT = "What is the capital of France?"
EMBED_SENTENCES: tuple[str, ...] = (
    "The cat sleeps on the warm windowsill.",
    "Paris is the capital and largest city of France.",
    "Interest rates rose for the third quarter in a row.",
    "How do I reset my password?",
    "The recipe needs two cups of flour and a pinch of salt.",
    "Photosynthesis converts light energy into chemical energy.",
    "She scored the winning goal in the final minute.",
    "Please restart the server after installing the update.",
)
SAMPLE_TOKENS = 32


def verify_threads() -> int:
    """The server's thread count (:func:`ffruntime.settings.default_threads`) for decoding one token at a
    time (the sample). Measured on a 2-core machine with one other busy process, SmolLM2's 120-token pass
    took 1.3 s on 1 thread and 3.5 s on 2 spinning ones (they collapse under contention)."""
    return default_threads()


_CAP = threading.local()
"""``threads``: the thread count evaluations of this thread run on when the caller gave none (work started
ahead of the verify stage, beside a stage that keeps the cores busy: :func:`verify_gguf_ahead`)."""


def eval_settings(threads: int | None) -> LoadSettings:
    """How verify loads a model: ``threads`` for everything when given; else the server's thread count
    for single tokens and every core for the text pass and prompts (nothing else runs beside a build);
    each decode then runs on the thread count :mod:`ffruntime.llamacpp.threads` measures best, up to
    every core, as in the server. Measured before that policy, with sleeping threads: three SmolLM2 variants,
    2 cores: 4.47 s on 1 thread, 3.68 s so, and the same 4.6 s either way beside a busy process
    (docs/benchmarks.md). The figures do not depend on the thread count."""
    threads = threads if threads is not None else getattr(_CAP, "threads", None)
    if threads is not None:
        return LoadSettings(threads=threads, threads_batch=threads)
    return LoadSettings(threads=verify_threads(), threads_batch=available_cores())


class VerifyReport(BaseModel):
    """What the verify stage measured for one GGUF (JSON-serialisable, stored with the build)."""

    path: str
    loads: bool
    task: str  # "generate", "embed", or "unknown" when the file is not a readable GGUF
    error: str | None = None
    prompt: str | None = None
    sample: str | None = None  # greedy answer to the prompt
    used_chat_template: bool = False
    perplexity: float | None = None
    reference: str | None = None
    reference_perplexity: float | None = None
    perplexity_ratio: float | None = None
    agreement: float | None = None  # next-token argmax agreement, or mean embedding cosine
    agreement_kind: str | None = None  # "next-token" or "embedding-cosine"
    min_cosine: float | None = None
    tokens_evaluated: int = 0
    lora: str | None = None
    seconds: float = 0.0
    notes: list[str] = []


@dataclass(frozen=True)
class _TextEval:
    tokens: tuple[int, ...]
    argmax: tuple[int, ...]
    perplexity: float


def _is_embedding(info: GGUFInfo) -> bool:
    pooled = info.pooling_type is not None and info.pooling_type > 0
    return pooled or info.architecture in ("bert", "nomic-bert")


def _eval_text(m: LlamaEval, text: str) -> _TextEval:
    tokens = m.tokenize(text, add_special=True)
    if len(tokens) < 2:
        raise VerifyError("the verification text is too short to measure anything")
    logits = m.logits(tokens)
    if not np.isfinite(logits).all():
        raise VerifyError(f"{m.path} produced non-finite logits")
    return text_eval(list(tokens), logits)


def _sample(m: LlamaEval, modelfile: ModelfilePrompt, prompt: str, report: VerifyReport) -> None:
    """The greedy answer to ``prompt``, rendered and tokenized as ``ff serve`` does (ffruntime.prompting)."""
    prompting = gguf_prompting(m.vocab, modelfile)
    report.used_chat_template = prompting.chats
    try:
        text, _ = question_prompt(prompting, prompt)
    except ChatTemplateError as e:  # the server would refuse every chat the same way
        report.error = f"the template cannot render the prompt: {e}"
        return
    report.sample = m.detokenize(m.generate(m.vocab.prompt_tokens(text), SAMPLE_TOKENS)).strip()


_TextKey = tuple[Path, int, int, str, int | None]  # file (path, size, mtime), text, threads
_TEXT_EVALS: collections.OrderedDict[_TextKey, _TextEval] = collections.OrderedDict()
_LOCKS: dict[object, tuple[threading.Lock, list[int]]] = {}  # key: (lock, [threads holding or waiting])
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def _once(key: object) -> Iterator[None]:
    """Holds the lock under which the result for ``key`` is made (so threads verifying side by side wait
    for one pass over a file instead of each making its own). The entry is freed when its last holder or
    waiter leaves: a long-lived process (``ff serve`` answering /api/create) verifies files without end."""
    with _LOCKS_GUARD:
        lock, users = _LOCKS.setdefault(key, (threading.Lock(), [0]))
        users[0] += 1
    try:
        with lock:
            yield
    finally:
        with _LOCKS_GUARD:
            users[0] -= 1
            if not users[0]:
                del _LOCKS[key]


def _remember_text(key: _TextKey, result: _TextEval) -> None:
    with _LOCKS_GUARD:
        _TEXT_EVALS[key] = result
        _TEXT_EVALS.move_to_end(key)
        while len(_TEXT_EVALS) > 16:
            _TEXT_EVALS.popitem(last=False)


def _reference_text(path: Path, size: int, mtime_ns: int, text: str, threads: int | None) -> _TextEval:
    """The pass over ``text`` of a file, from the cache when the file was verified or used as a reference
    already (a build verifies its f16 first, then measures every quantization against it)."""
    key = (path, size, mtime_ns, text, threads)
    with _once(key):
        if (hit := _TEXT_EVALS.get(key)) is not None:
            return hit
        with LlamaEval(path, settings=eval_settings(threads)) as m:
            result = _eval_text(m, text)
        _remember_text(key, result)
    return result


def _reference_embeddings(
    path: Path, size: int, mtime_ns: int, threads: int | None
) -> tuple[FloatArray, ...]:
    with _once(("embed", path, size, mtime_ns, threads)):
        return _embeddings(path, size, mtime_ns, threads)


@functools.lru_cache(maxsize=16)
def _embeddings(path: Path, size: int, mtime_ns: int, threads: int | None) -> tuple[FloatArray, ...]:
    with LlamaEval(path, embedding=True, settings=eval_settings(threads)) as m:
        return tuple(m.embed(s) for s in EMBED_SENTENCES)


def _file_key(path: Path) -> tuple[Path, int, int]:
    st = path.stat()
    return path.resolve(), st.st_size, st.st_mtime_ns


def verify_gguf(
    path: Path,
    *,
    reference: Path | None = None,
    text: str = DEFAULT_TEXT,
    prompt: str | None = None,
    lora: Path | Sequence[Path] | None = None,
    threads: int | None = None,
    template: str | None = None,
) -> VerifyReport:
    """Load ``path`` in llama.cpp and measure it (see the module doc); never raises for a bad model:
    a model that does not load gives ``loads=False`` and the reason in ``error``. A measurement of the
    same file with the same arguments started ahead (:func:`verify_gguf_ahead`) is waited for, not
    repeated."""
    if not lora and (made := _claim(_job_key(path, reference, text, prompt, threads, template))) is not None:
        return made
    with _under_way():
        return _measure(path, reference, text, prompt, lora, threads, template)


_RUNNING = [0]
"""Measurements under way in this process (:func:`_measure` calls, each inside :func:`_under_way`): one
alone may take every core."""


@contextlib.contextmanager
def _under_way() -> Iterator[None]:
    with _LOCKS_GUARD:
        _RUNNING[0] += 1
    try:
        yield
    finally:
        with _LOCKS_GUARD:
            _RUNNING[0] -= 1


def _measure(
    path: Path,
    reference: Path | None,
    text: str,
    prompt: str | None,
    lora: Path | Sequence[Path] | None,
    threads: int | None,
    template: str | None,
) -> VerifyReport:
    start = time.perf_counter()
    try:
        info = read_gguf_info(path)
    except StageError as e:
        return VerifyReport(
            path=str(path), loads=False, task="unknown", error=str(e), seconds=time.perf_counter() - start
        )
    embedding = _is_embedding(info)
    report = VerifyReport(
        path=str(path),
        loads=False,
        task="embed" if embedding else "generate",
        reference=str(reference) if reference is not None else None,
        lora=(str(lora) if isinstance(lora, Path) else ", ".join(map(str, lora))) if lora else None,
    )
    try:
        if embedding:
            _verify_embedding(path, reference, lora, threads, report)
        else:
            modelfile = ModelfilePrompt(template=template)
            _verify_text(path, reference, text, modelfile, prompt or DEFAULT_PROMPT, lora, threads, report)
    except (StageError, RuntimeFailure) as e:
        report.error = str(e)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def _side_by_side(threads: int | None, lora: Path | Sequence[Path] | None) -> bool:
    """Whether a file's text pass and its sample run at once, one thread each, in two contexts of the
    loaded model (a 120-token pass and a one-token-at-a-time answer each gain less from a second thread
    than from running beside the other): when neither ``--threads`` nor work ahead imposes a count."""
    return not lora and threads is None and getattr(_CAP, "threads", None) is None and available_cores() > 1


def _own_text(m: LlamaEval, key: _TextKey, text: str) -> _TextEval:
    """The file's pass over ``text``: made once (it is also its pass as another variant's reference)."""
    with _once(key):
        own = _TEXT_EVALS.get(key) or _eval_text(m, text)
        _remember_text(key, own)
    return own


def _text_beside_sample(
    m: LlamaEval, key: _TextKey, text: str, modelfile: ModelfilePrompt, prompt: str, report: VerifyReport
) -> _TextEval:
    def text_pass() -> _TextEval:
        try:
            return _own_text(twin, key, text)
        finally:  # alone, the rest of the answer may use the core the text pass leaves (the server's rule)
            if _RUNNING[0] == 1:
                m.threads = Threads(available_cores())

    with m.twin() as twin, ThreadPoolExecutor(1, thread_name_prefix="ff-verify-text") as pool:
        pending = pool.submit(text_pass)
        try:
            _sample(m, modelfile, prompt, report)
        finally:
            concurrent.futures.wait([pending])
        try:
            return pending.result()
        except BaseException:  # as when the text pass comes first and fails: no sample reported
            report.prompt, report.sample, report.used_chat_template, report.error = None, None, False, None
            raise


def _verify_text(
    path: Path,
    reference: Path | None,
    text: str,
    modelfile: ModelfilePrompt,
    prompt: str,
    lora: Path | Sequence[Path] | None,
    threads: int | None,
    report: VerifyReport,
) -> None:
    key: _TextKey = (*_file_key(path), text, threads)
    split = _side_by_side(threads, lora) and key not in _TEXT_EVALS
    settings = LoadSettings(threads=1, threads_batch=1) if split else eval_settings(threads)
    with LlamaEval(path, lora=lora, settings=settings) as m:
        report.loads = True
        if split:
            report.prompt = prompt
            own = _text_beside_sample(m, key, text, modelfile, prompt, report)
        else:
            own = _eval_text(m, text) if lora else _own_text(m, key, text)
            report.prompt = prompt
            _sample(m, modelfile, prompt, report)
    ref = _reference_text(*_file_key(reference), text, threads) if reference is not None else None
    report.perplexity = round(own.perplexity, 4)
    report.tokens_evaluated = len(own.tokens)
    if ref is not None:
        if ref.tokens != own.tokens:
            raise VerifyError(f"{path} tokenizes the verification text unlike its reference {reference}")
        same = sum(a == b for a, b in zip(own.argmax[:-1], ref.argmax[:-1], strict=True))
        report.agreement = round(same / (len(own.tokens) - 1), 4)
        report.agreement_kind = "next-token"
        report.reference_perplexity = round(ref.perplexity, 4)
        report.perplexity_ratio = round(own.perplexity / ref.perplexity, 4)


def _verify_embedding(
    path: Path,
    reference: Path | None,
    lora: Path | Sequence[Path] | None,
    threads: int | None,
    report: VerifyReport,
) -> None:
    ref = _reference_embeddings(*_file_key(reference), threads) if reference is not None else None
    with LlamaEval(path, embedding=True, lora=lora, settings=eval_settings(threads)) as m:
        report.loads = True
        own = [m.embed(s) for s in EMBED_SENTENCES]
    report.tokens_evaluated = len(own)
    if ref is not None:
        cos = [float(np.dot(a, b)) for a, b in zip(own, ref, strict=True)]
        report.agreement = round(float(np.mean(cos)), 5)
        report.min_cosine = round(min(cos), 5)
        report.agreement_kind = "embedding-cosine"


@dataclass
class _Job:
    """A measurement started ahead: ``queued`` (its thread waits for its turn), ``running``, ``done``;
    ``claimed`` once the verify stage took it over before it began."""

    state: str = "queued"
    done: threading.Event = field(default_factory=threading.Event)
    report: VerifyReport | None = None


_JobKey = tuple[object, ...]
_JOBS: dict[_JobKey, _Job] = {}


def _job_key(
    path: Path,
    reference: Path | None,
    text: str,
    prompt: str | None,
    threads: int | None,
    template: str | None,
) -> _JobKey | None:
    try:
        ref = _file_key(reference) if reference is not None else None
        return (_file_key(path), ref, text, prompt, threads, template)
    except OSError:
        return None


def _claim(key: _JobKey | None) -> VerifyReport | None:
    """The report of the measurement started ahead under ``key``: waited for when it runs, None when there
    is none or it had not begun (the caller measures, and the queued one is dropped)."""
    if key is None:
        return None
    with _LOCKS_GUARD:
        job = _JOBS.pop(key, None)
        if job is None:
            return None
        if job.state == "queued":
            job.state = "claimed"
            return None
    job.done.wait()
    return job.report


def verify_gguf_ahead(
    path: Path,
    *,
    reference: Path | None = None,
    text: str = DEFAULT_TEXT,
    prompt: str | None = None,
    threads: int | None = None,
    template: str | None = None,
    turn: threading.Lock,
) -> threading.Thread:
    """Start :func:`verify_gguf` of ``path`` (no LoRA) in a thread that waits for ``turn`` (one measurement
    ahead at a time) and runs on one thread unless ``threads`` says otherwise: it works beside the stage
    that keeps the cores busy meanwhile (the quantizer). :func:`verify_gguf` with the same arguments later
    returns its report. The figures do not depend on the thread count (:func:`eval_settings`)."""
    key = _job_key(path, reference, text, prompt, threads, template)
    job = _Job()

    def work() -> None:
        with turn:
            with _LOCKS_GUARD:
                if job.state != "queued":
                    return
                job.state = "running"
            _CAP.threads = 1
            try:
                with _under_way():
                    job.report = _measure(path, reference, text, prompt, None, threads, template)
            finally:
                job.state = "done"
                job.done.set()

    if key is not None:
        with _LOCKS_GUARD:
            _JOBS[key] = job
    thread = threading.Thread(target=work, name="ff-verify-ahead")
    thread.start()
    return thread


TextEval = _TextEval
"""What one text pass measured: the tokens, the greedy next token at each position, the perplexity."""


def reference_text(path: Path, text: str, threads: int | None) -> TextEval:
    """The reference GGUF's pass over ``text`` (cached per file and text, as for GGUF variants)."""
    return _reference_text(*_file_key(path), text, threads)


def text_eval(tokens: list[int], logits: FloatArray) -> TextEval:
    """Greedy next tokens and perplexity from per-position logits (any backend's)."""
    best = np.asarray(logits).argmax(axis=1)
    head = np.asarray(logits[:-1], dtype=np.float32)
    rows = np.arange(len(tokens) - 1)
    top = head[rows, best[:-1]]  # each row's maximum, where its argmax is
    # log-sum-exp per position: exp in float32, in place (5× faster than float64 over 120 × 49k), sums in
    # float64
    shifted = np.subtract(head, top[:, None])
    np.exp(shifted, out=shifted)
    lse = np.log(shifted.sum(axis=1, dtype=np.float64)) + top
    nll = lse - head[rows, tokens[1:]]
    return _TextEval(tuple(tokens), tuple(best.tolist()), float(math.exp(nll.mean())))
