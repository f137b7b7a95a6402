"""The llama.cpp batching engine: one context, every running sequence in each ``llama_decode``.

One engine thread owns the context (the event loop never runs model code). At every step it

1. retires cancelled sequences and admits waiting ones into free sequence slots (a slot is a llama.cpp
   sequence id with its own KV stream of ``num_ctx`` cells);
2. builds one batch. While some sequences are generating, steps alternate between the last sampled
   token of each of them (decode-only) and one chunk of one prompt still being read (prompt-only, the
   size :class:`~ffruntime.llamacpp.pacing.Prefill` allows, so their inter-token latency stays bounded):
   each is one forward pass, where a mixed batch would be two. While none is generating, prompt chunks
   of a whole batch (``n_batch``);
3. decodes it on the thread count :class:`~ffruntime.llamacpp.threads.Threads` picks from the measured
   CPU use of other processes, and samples each sequence that produced logits with its own sampler
   chain; the logits of a constrained sequence are masked first (:mod:`ffruntime.llamacpp.guide`: the
   masks of all constrained sequences of the step are computed together).

Prefix reuse: a finished sequence's KV stays in its slot. A new request takes the free slot that keeps
the running sequence ids in the fewest runs (:func:`~ffruntime.llamacpp.slots.pick_slot`), keeps the
prefix its own cache shares with the prompt, or copies the KV of any slot sharing a longer one
(``llama_memory_seq_cp``), and decodes only the rest. A batch the KV cache cannot hold defers its
youngest sequence (it is re-read later) or, alone, ends it with ``length``; it never crashes.

Media (:mod:`ffruntime.llamacpp.media`): a job with images or audio holds each media chunk as a run of
pseudo tokens. Its text is read in the shared batches up to a chunk; once the projector's thread has
encoded the chunk, the step decodes its embeddings into the sequence alone (``_media_step``) and the
text after it follows; ``pos_delta`` keeps M-RoPE positions, and a kept prefix never ends inside a chunk.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.guide import Guide, compute_masks
from ffruntime.llamacpp.library import binding
from ffruntime.llamacpp.outbox import Outbox
from ffruntime.llamacpp.pacing import Gaps, Prefill
from ffruntime.llamacpp.sampling import Sampler, log_softmax, top_alternatives
from ffruntime.llamacpp.slots import MIN_SHARED, Slot, Stats, common_prefix, pick_slot
from ffruntime.llamacpp.text import TextStream
from ffruntime.llamacpp.threads import Threads
from ffruntime.llamacpp.vocab import Vocab
from ffruntime.runtime import CancelFlag, Done, DoneReason, Token, TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from ffruntime.llamacpp.media import MediaPrompt

END = object()
"""Emitted after a sequence's last event."""

@dataclass
class Job:
    """One generation: prompt tokens, its own sampler, limits, and where its events go (thread-safe)."""

    prompt: list[int]
    sampler: Sampler
    stops: list[str]
    max_new: int  # < 0: no limit
    limit: int  # most tokens this sequence may hold (prompt + generated)
    emit: Callable[[object], None]
    cancel: CancelFlag
    logprobs: bool = False
    top_logprobs: int = 0
    guide: Guide | None = None  # the output constraint (format, schema, forced tool call)
    media: MediaPrompt | None = None  # images/clips: their chunks are pseudo tokens in ``prompt``
    loop: asyncio.AbstractEventLoop | None = None  # with ``put``: events go to this loop once a step
    put: Callable[[object], None] | None = None  # (:mod:`ffruntime.llamacpp.outbox`), else via ``emit``

    def close(self) -> None:
        self.sampler.close()
        if self.media is not None:
            self.media.close()


@dataclass
class _Seq:
    job: Job
    tokens: list[int]
    text: TextStream
    order: int
    n_past: int = 0  # tokens of ``tokens`` in the slot's KV
    pos_delta: int = 0  # position of token ``n_past`` minus ``n_past`` (media chunks of M-RoPE models)
    slot: Slot | None = None
    generated: list[int] = field(default_factory=list)
    pending: list[TokenLogprob] = field(default_factory=list)
    t_start: int = 0  # when it was submitted (perf_counter_ns)
    t_first: int = 0
    t_last: int = 0  # when its last token was sampled


class Engine:
    """The thread that drives one llama.cpp context; :meth:`submit` hands it a :class:`Job`."""

    def __init__(
        self,
        ctx: Any,
        vocab: Vocab,
        *,
        n_slots: int,
        n_batch: int,
        prefill_chunk: int,
        threads: Threads,
        name: str,
        side_work: SideWork | None = None,
    ) -> None:
        self.lc = binding()
        self.ctx, self.vocab = ctx, vocab
        self.mem = self.lc.llama_get_memory(ctx) if ctx else None
        self.n_batch = n_batch
        self.threads = threads  # the embedder's decodes go through it too (the same thread)
        self.prefill = Prefill(n_batch, prefill_chunk)
        self.gaps = Gaps()
        self.slots = [Slot(i) for i in range(n_slots)]
        self.stats = Stats()
        self._side_work = side_work  # embedding batches, run between decoding steps
        self._outbox = Outbox()  # this step's events, posted just before the next decode
        self._cond = threading.Condition()
        self._incoming: list[tuple[Job, int]] = []  # (job, when submitted)
        self._waiting: collections.deque[_Seq] = collections.deque()
        self._active: list[_Seq] = []
        self._order = 0
        self._hold_waiting = False  # after a full KV cache: admit again once a sequence retires
        self._prompt_turn = False  # while some generate: the next step reads a prompt chunk alone
        self._kind = "decode"  # this step's kind: decode (only), prompt (one chunk alone) or full
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"llamacpp-{name}", daemon=True)
        self._thread.start()

    # --- the outside ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stop:
                raise RuntimeFailure("the model is unloading")
            self._incoming.append((job, time.perf_counter_ns()))
            self._cond.notify()

    def wake(self) -> None:
        """Look for work again (the side work has some)."""
        with self._cond:
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    @property
    def busy(self) -> int:
        return len(self._active) + len(self._waiting)

    # --- the thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        batch = self.lc.llama_batch_init(self.n_batch, 0, 1) if self.ctx else None
        try:
            while True:
                with self._cond:
                    while not (self._stop or self._incoming or self._active or self._waiting
                               or (self._side_work is not None and self._side_work.pending())):
                        self._cond.wait()
                    if self._stop:
                        break
                    new, self._incoming = self._incoming, []
                for job, submitted in new:
                    self._order += 1
                    self._waiting.append(_Seq(job, list(job.prompt), TextStream(job.stops), self._order,
                                              t_start=submitted))
                if self._side_work is not None and self._side_work.pending():
                    self._outbox.flush()
                    self._side_work.run()
                if batch is not None and (self._active or self._waiting) and not self._step(batch):
                    self._outbox.flush()
                    with self._cond:  # every sequence waits for its media's encoder, which wakes us
                        if not (self._stop or self._incoming):
                            self._cond.wait(0.05)
                if not self._active:  # else the next step's decode posts them
                    self._outbox.flush()
        finally:
            gone = RuntimeFailure("the model was unloaded")
            for seq in [*self._active, *self._waiting]:
                self._fail(seq, gone)
            for job, _ in self._incoming:
                job.close()
                self._emit(job, gone)
                self._emit(job, END)
            self._outbox.close()
            if batch is not None:
                self.lc.llama_batch_free(batch)

    def _step(self, batch: Any) -> bool:
        for seq in [s for s in self._active if s.job.cancel.is_set]:
            self._finish(seq, "cancelled")
        for seq in [s for s in self._waiting if s.job.cancel.is_set]:
            self._waiting.remove(seq)
            self._finish(seq, "cancelled")
        while self._waiting and not self._hold_waiting:
            free = [s for s in self.slots if s.seq is None]
            if not free:
                break
            seq = self._waiting.popleft()
            try:
                self._admit(seq, free)
            except Exception as exc:  # this request only
                self._fail(seq, exc)
        media = self._media_step()
        entries = self._plan()
        if not entries:
            return media or not self._active
        rc, why = self._decode(batch, entries)
        if rc == 1:
            self._kv_full(entries)
            return True
        if rc != 0:
            failure = RuntimeFailure(f"llama_decode failed ({rc}): {why}")
            for seq, _, _ in entries:
                self._fail(seq, failure)
            return True
        for seq, n, _ in entries:
            seq.n_past += n
        self._masks([seq for seq, _, idx in entries if idx >= 0 and seq.job.guide is not None])
        for seq, _, idx in entries:
            if idx >= 0 and seq.slot is not None:
                try:
                    self._output(seq, idx)
                except Exception as exc:  # a failure while sampling one sequence ends that one only
                    self._fail(seq, exc)
        return True

    def _media_step(self) -> bool:
        """Decode each encoded media chunk that a sequence reached (one ``llama_decode`` of embeddings
        each: llama.cpp takes tokens or embeddings in a batch, not both); True when one was decoded."""
        done = False
        for seq in [s for s in self._active if s.job.media is not None]:
            media = seq.job.media
            assert media is not None and seq.slot is not None
            part = media.part_at(seq.n_past)
            if part is None or not part.done.is_set():
                continue
            self._outbox.flush()  # the other sequences' tokens do not wait for this decode
            try:
                pos = media.decode(self.ctx, part, seq.slot.seq_id, seq.n_past + seq.pos_delta, self.n_batch)
            except Exception as exc:  # this request only
                self._fail(seq, exc)
                continue
            seq.pos_delta = pos - seq.n_past - part.n_tokens
            seq.n_past += part.n_tokens
            self.stats.media_chunks += 1
            done = True
        return done

    def _masks(self, guided: list[_Seq]) -> None:
        """This step's token masks of the constrained sequences that sample now, computed together."""
        try:
            compute_masks([seq.job.guide for seq in guided if seq.job.guide is not None])
        except Exception as exc:  # a misuse of llguidance's API: those sequences only
            for seq in guided:
                self._fail(seq, exc)

    def _plan(self) -> list[tuple[_Seq, int, int]]:
        """(sequence, tokens to decode now, batch index of its logits or -1) for this step, in sequence id
        order: llama.cpp splits a batch over per-sequence KV streams into one forward pass per run of
        consecutive ids in increasing order (``split_equal``), so any other order costs extra passes.

        While some sequences generate, steps alternate: a decode-only step (their tokens, one pass), then
        a prompt-only step (one chunk of one prompt, one pass, sized by :class:`Prefill`); a prompt chunk
        beside decode tokens would be a second pass (:mod:`ffruntime.llamacpp.pacing`). While none
        generates, prompts are read a whole batch at a time; so, in the prompt-only step, is the rest of
        a burst: prompts that came before the generating ones' first tokens, no longer (docs/serving.md)."""
        generating = [s for s in self._active if len(s.tokens) - s.n_past == 1]
        reading = [s for s in self._active if len(s.tokens) - s.n_past > 1]
        picked: list[tuple[_Seq, int]] = []
        self._kind = "decode"
        if generating and self._prompt_turn:
            first = min(s.t_first or time.perf_counter_ns() for s in generating)
            longest = max(len(s.job.prompt) for s in generating)
            burst = [s for s in reading if s.t_start <= first and len(s.tokens) - s.n_past <= longest]
            picked = self._chunks(burst, self.n_batch, one=False)  # none readable (media): paced
            self._kind = "full" if len(picked) > 1 else "prompt"
            if not picked:
                budget = self.prefill.budget(len(generating), self.threads.current)
                picked = self._chunks(reading, budget, one=True)
        if not picked:
            self._kind = "decode" if generating else "full"
            picked = [(s, 1) for s in generating[: self.n_batch]]
            if not generating:
                picked = self._chunks(reading, self.n_batch, one=False)
        self._prompt_turn = self._kind == "decode"
        picked.sort(key=lambda e: e[0].slot.seq_id if e[0].slot is not None else -1)
        entries: list[tuple[_Seq, int, int]] = []
        pos = 0
        for seq, n in picked:
            pos += n
            entries.append((seq, n, pos - 1 if seq.n_past + n == len(seq.tokens) else -1))
        return entries

    @staticmethod
    def _chunks(reading: list[_Seq], budget: int, *, one: bool) -> list[tuple[_Seq, int]]:
        """Prompt chunks of up to ``budget`` tokens in all (of the first sequence that can read, if
        ``one``)."""
        picked: list[tuple[_Seq, int]] = []
        for seq in reading:
            # A prompt is read up to its last token, which is then decoded alone, as after a reused
            # prefix: the logits of a sequence never depend on how much of its prompt was cached.
            n = min(len(seq.tokens) - seq.n_past - 1, budget)
            if seq.job.media is not None:  # read text up to the next media chunk
                n = min(n, seq.job.media.text_until(seq.n_past) - seq.n_past)
                if n <= 0 and budget > 0:
                    continue  # its chunk is being encoded
            if n <= 0:
                break
            picked.append((seq, n))
            budget -= n
            if one:
                break
        return picked

    def _decode(self, batch: Any, entries: list[tuple[_Seq, int, int]]) -> tuple[int, str]:
        i = 0
        prompt = 0
        for seq, n, idx in entries:
            assert seq.slot is not None
            sid = seq.slot.seq_id
            for k in range(n):
                batch.token[i] = seq.tokens[seq.n_past + k]
                batch.pos[i] = seq.n_past + k + seq.pos_delta
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = sid
                batch.logits[i] = i == idx
                i += 1
            if n > 1 or not seq.generated:
                prompt += n
        batch.n_tokens = i
        t0 = time.perf_counter()
        # The event loops stream the last step's tokens while this one computes (posted last: see
        # Threads.decode). No captured_log here: 0.2 ms a step.
        rc = self.threads.decode(self.lc, self.ctx, batch, i, ready=self._outbox.flush)
        if rc == 0 and (self._kind != "full" or len(entries) == 1):  # one forward pass: a measure
            self.prefill.record(time.perf_counter() - t0, i, self._kind != "decode", self.threads.current)
        st = self.stats
        st.steps += 1
        st.batch_tokens += i
        st.batch_sequences += len(entries)
        st.last_batch_sequences = len(entries)
        st.max_batch_sequences = max(st.max_batch_sequences, len(entries))
        st.prompt_tokens += prompt
        return rc, "see llama.cpp's log" if rc not in (0, 1) else ""

    # --- sequences -----------------------------------------------------------------------------------
    def _admit(self, seq: _Seq, free: list[Slot]) -> None:
        tokens = seq.tokens
        slot = pick_slot(free, {s.seq_id for s in self.slots if s.seq is not None}, tokens)
        own = common_prefix(slot.cached, tokens)
        donor, shared = None, own
        for other in self.slots:
            if other is not slot and (n := common_prefix(other.kv_tokens(), tokens)) > shared:
                donor, shared = other, n
        mem, lc = self.mem, self.lc
        if donor is not None and shared >= MIN_SHARED:
            lc.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
            lc.llama_memory_seq_cp(mem, donor.seq_id, slot.seq_id, -1, -1)
        else:
            shared = own
        keep = min(shared, len(tokens) - 1)  # the last prompt token is decoded again for its logits
        delta = 0
        if seq.job.media is not None:  # never inside a media chunk; text after one sits off its index
            keep, delta = seq.job.media.rewind(keep)
        if not lc.llama_memory_seq_rm(mem, slot.seq_id, keep + delta, -1):
            lc.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
            keep = delta = 0
        slot.cached, slot.seq, seq.slot, seq.n_past, seq.pos_delta = [], seq, slot, keep, delta
        if keep:
            self.stats.prefix_hits += 1
            self.stats.prefix_tokens += keep
        self._active.append(seq)

    def _output(self, seq: _Seq, idx: int) -> None:
        job, vocab = seq.job, self.vocab
        now = time.perf_counter_ns()
        if not seq.t_first:
            seq.t_first = now
        elif seq.t_last:
            self.gaps.add((now - seq.t_last) / 1e9)
        seq.t_last = now
        if job.max_new == 0:
            self._finish(seq, "length")
            return
        logp = None
        if job.logprobs or job.guide is not None:
            raw = self.lc.llama_get_logits_ith(self.ctx, idx)
            logits = np.ctypeslib.as_array(raw, shape=(vocab.n_tokens,))
            if job.logprobs:
                logp = log_softmax(logits)  # the model's own distribution, before any constraint
            if job.guide is not None:
                job.guide.constrain(logits)  # in llama.cpp's buffer, which the sampler chain reads
        tok = job.sampler.sample(self.ctx, idx)
        if vocab.is_eog(tok):
            self._finish(seq, "stop")
            return
        if job.guide is not None:
            job.guide.accept(tok)
        seq.generated.append(tok)
        seq.tokens.append(tok)
        piece = vocab.piece(tok)
        if logp is not None:
            top = tuple(TopLogprob(vocab.text(t), lp, tuple(vocab.piece(t)))
                        for t, lp in top_alternatives(logp, job.top_logprobs))
            seq.pending.append(TokenLogprob(vocab.text(tok), float(logp[tok]), tuple(piece), top))
        text = seq.text.feed(piece)
        if text:
            self._emit(job, Token(text, tuple(seq.pending)))
            seq.pending = []
        if seq.text.stopped or (job.guide is not None and job.guide.stopped):
            self._finish(seq, "stop")
        elif 0 < job.max_new <= len(seq.generated) or len(seq.tokens) >= job.limit:
            self._finish(seq, "length")

    def _release(self, seq: _Seq) -> None:
        if seq in self._active:
            self._active.remove(seq)
        if seq.slot is not None:
            seq.slot.cached = seq.tokens[: seq.n_past]
            seq.slot.seq = None
            seq.slot.last_used = time.monotonic()
            seq.slot = None
            self._hold_waiting = False

    def _finish(self, seq: _Seq, reason: DoneReason) -> None:
        self._release(seq)
        seq.job.close()
        self.stats.finished += 1
        job = seq.job
        now = time.perf_counter_ns()
        first = seq.t_first or now
        if reason != "cancelled" and (tail := seq.text.flush()):
            self._emit(job, Token(tail, tuple(seq.pending)))
        done = Done(reason, len(job.prompt), len(seq.generated), first - seq.t_start, now - first,
                    (*job.prompt, *seq.generated), seq.text.matched if reason == "stop" else None)
        self._emit(job, done)
        self._emit(job, END)

    def _fail(self, seq: _Seq, exc: BaseException) -> None:
        if seq.slot is not None:  # what the failed step left in the KV is not trusted
            self.lc.llama_memory_seq_rm(self.mem, seq.slot.seq_id, -1, -1)
            seq.n_past = seq.pos_delta = 0
        self._release(seq)
        seq.job.close()
        if seq in self._waiting:
            self._waiting.remove(seq)
        self._emit(seq.job, exc)
        self._emit(seq.job, END)

    def _emit(self, job: Job, item: object) -> None:
        if job.loop is not None and job.put is not None:
            self._outbox.add(job.loop, job.put, item)
        else:
            _safe_emit(job.emit, item)

    def _kv_full(self, entries: list[tuple[_Seq, int, int]]) -> None:
        """The KV cache could not hold this batch: free idle slots' caches, defer the youngest sequence,
        or, when it ran alone, end it (its context is full)."""
        idle = [s for s in self.slots if s.seq is None and s.cached]
        for slot in idle:
            self.lc.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            slot.cached = []
        if idle:
            return
        seqs = sorted({id(s): s for s, _, _ in entries}.values(), key=lambda s: s.order)
        youngest = seqs[-1]
        if len(seqs) == 1:
            self._finish(youngest, "length")
            return
        assert youngest.slot is not None
        self.lc.llama_memory_seq_rm(self.mem, youngest.slot.seq_id, -1, -1)
        youngest.n_past = youngest.pos_delta = 0
        self._release(youngest)
        self._waiting.appendleft(youngest)
        self._hold_waiting = True
        self.stats.deferred += 1


class SideWork(Protocol):
    """Work the engine thread runs between decoding steps (embedding batches)."""

    def pending(self) -> bool: ...

    def run(self) -> None: ...


def _safe_emit(emit: Callable[[object], None], item: object) -> None:
    with contextlib.suppress(RuntimeError):  # the request's event loop is gone
        emit(item)
