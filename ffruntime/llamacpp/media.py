"""Images and audio in the batching engine, through llama.cpp's multimodal library (libmtmd).

A variant with a projector layer (``mmproj.gguf``) loads a :class:`Projector` beside its text model.

- :meth:`Projector.prompt` (a request's worker thread) checks and decodes each item (images with Pillow,
  :mod:`ffruntime.images`; audio with PyAV, :mod:`ffruntime.audio`, bounded in seconds as it decodes),
  makes libmtmd bitmaps whose id is the item's SHA-256, and tokenizes the rendered prompt (a
  :data:`MARKER` where each item goes) into libmtmd's chunks. The result, a :class:`MediaPrompt`, is
  the job's token list with each media chunk as a run of *pseudo tokens* (one negative id per chunk
  position, derived from the digest), so the engine's prefix reuse compares and keeps image chunks
  like text: the same image in the same place is the same run, and a sequence that shares it reuses
  its KV without encoding or decoding it again.
- Encoding starts at once on the projector's own thread (not the engine's): while an image is encoded
  the engine keeps decoding every other sequence. libmtmd's encoder (the vision tower, on its own ggml
  context) and ``llama_decode`` share no state, so the two run side by side on different cores; the
  encoder runs one item at a time. Embeddings are kept by digest (LRU, :data:`CACHE_BYTES`): an image
  seen before is not encoded again, even when no slot still holds its KV.
- The engine decodes a ready chunk into the sequence's KV with ``mtmd_helper_decode_image_chunk`` (one
  ``llama_decode`` of embeddings for that sequence alone: llama.cpp takes a batch of tokens *or* of
  embeddings, never both), at the positions libmtmd gives (M-RoPE models such as Qwen2-VL place an
  image's rows and columns in 2-D and advance the position by fewer steps than the image has tokens:
  :attr:`MediaPart.n_pos`), then reads the text after it in the shared batches as usual.
"""

from __future__ import annotations

import collections
import ctypes
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ffruntime.errors import RuntimeFailure
from ffruntime.images import audio_format, check_request, decode_image
from ffruntime.llamacpp.library import binding, captured_log, log_tail
from ffruntime.runtime import Media, MediaRejected
from ffruntime.settings import MediaLimits

MARKER = "<__media__>"
"""Where an item goes in the rendered prompt (libmtmd's default marker)."""
CACHE_BYTES = 256 << 20  # encoded embeddings kept by digest


def pseudo_token(digest: str) -> int:
    """The negative id every position of a media chunk takes in the engine's token lists."""
    return -1 - (int(digest[:8], 16) & 0x3FFFFFFF)


@dataclass
class MediaPart:
    """One media chunk of a prompt: where it starts in the token list, its tokens and positions."""

    chunk: Any  # an owned mtmd_input_chunk copy
    digest: str
    start: int
    n_tokens: int
    n_pos: int
    embd: npt.NDArray[np.float32] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class MediaPrompt:
    """A job's prompt with media: the tokens (pseudo tokens where media go) and the media parts."""

    tokens: list[int]
    parts: list[MediaPart]
    projector: Projector
    _at: dict[int, MediaPart] = field(init=False)

    def __post_init__(self) -> None:
        self._at = {p.start: p for p in self.parts}

    def after(self, context: list[int]) -> list[int]:
        """Put ``context`` (tokens of an earlier turn) before the prompt; the whole token list."""
        if context:
            self.tokens = context + self.tokens
            for p in self.parts:
                p.start += len(context)
            self._at = {p.start: p for p in self.parts}
        return self.tokens

    def part_at(self, index: int) -> MediaPart | None:
        return self._at.get(index)

    def text_until(self, index: int) -> int:
        """Where the next media part at or after ``index`` starts (the token count when none)."""
        return min((p.start for p in self.parts if p.start >= index), default=len(self.tokens))

    def rewind(self, keep: int) -> tuple[int, int]:
        """(tokens to keep, position shift at that point): a kept prefix never ends inside a media part,
        and the text after a part sits ``n_pos - n_tokens`` positions off its token index."""
        delta = 0
        for p in self.parts:
            if p.start >= keep:
                break
            if p.start + p.n_tokens > keep:
                return p.start, delta
            delta += p.n_pos - p.n_tokens
        return keep, delta

    def decode(self, ctx: Any, part: MediaPart, seq_id: int, pos: int, n_batch: int) -> int:
        """Decode the encoded part into ``seq_id`` from position ``pos``; the position after it."""
        if part.error is not None:
            raise part.error
        assert part.embd is not None
        return self.projector.decode(ctx, part, seq_id, pos, n_batch)

    def close(self) -> None:
        self.projector.free(self.parts)


class Projector:
    """libmtmd's context for one text model, its encoder thread and its embedding cache."""

    def __init__(self, path: Path, model: Any, n_embd: int, *, threads: int, limits: MediaLimits,
                 wake: Callable[[], None]) -> None:
        lc = binding()
        from llama_cpp import mtmd_cpp

        self.m = mtmd_cpp
        from ffruntime.llamacpp.library import _LOG_CALLBACK

        if _LOG_CALLBACK:  # libmtmd's log (clip's per-image lines) goes where llama.cpp's goes
            mtmd_cpp.mtmd_log_set(_LOG_CALLBACK[0], None)
            mtmd_cpp.mtmd_helper_log_set(_LOG_CALLBACK[0], None)
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.warmup = False
        params.n_threads = max(1, threads)
        with captured_log() as log:
            self.ctx = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model, params)
        if not self.ctx:
            why = log_tail(log)
            raise RuntimeFailure(f"llama.cpp's multimodal library cannot load the projector {path}: {why}")
        self.lc, self.n_embd, self.limits, self._wake = lc, n_embd, limits, wake
        self._no_callback = mtmd_cpp.mtmd_helper_post_decode_callback()  # a null function pointer
        self.vision = bool(mtmd_cpp.mtmd_support_vision(self.ctx))
        self.audio = bool(mtmd_cpp.mtmd_support_audio(self.ctx))
        self._lock = threading.Lock()  # libmtmd's context: one tokenize or encode at a time
        self._cache: collections.OrderedDict[str, npt.NDArray[np.float32]] = collections.OrderedDict()
        self._cached_bytes = 0
        self.encoded = self.cache_hits = self.last_tokens = 0
        self.encode_seconds = 0.0  # time the encoder thread spent in libmtmd's encoder
        self._queue: queue.SimpleQueue[MediaPart | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._encode_loop, name="mtmd-encoder", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        with self._lock:
            if self.ctx:
                self.m.mtmd_free(self.ctx)
                self.ctx = None

    def free(self, parts: Sequence[MediaPart]) -> None:
        with self._lock:  # not while the encoder reads one of them
            for p in parts:
                if p.chunk:
                    self.m.mtmd_input_chunk_free(p.chunk)
                    p.chunk = None

    # --- a request's worker thread --------------------------------------------------------------------
    def prompt(self, text: str, media: Sequence[Media], *, add_special: bool, model_name: str) -> MediaPrompt:
        """Tokenize ``text`` (one :data:`MARKER` per item of ``media``, in order) with the items."""
        check_request(media, self.limits)
        m = self.m
        bitmaps: list[Any] = []
        try:
            pixels_left = self.limits.request_pixels
            for i, item in enumerate(media, 1):
                bitmap = self._bitmap(item, f"{item.kind} {i}", pixels_left, model_name)
                bitmaps.append(bitmap)
                if item.kind == "image":
                    pixels_left -= int(m.mtmd_bitmap_get_nx(bitmap)) * int(m.mtmd_bitmap_get_ny(bitmap))
                m.mtmd_bitmap_set_id(bitmap, hashlib.sha256(item.data).hexdigest().encode())
            return self._tokenize(text, bitmaps, add_special)
        finally:
            for b in bitmaps:
                m.mtmd_bitmap_free(b)

    def _bitmap(self, item: Media, label: str, pixels_left: int, model_name: str) -> Any:
        m = self.m
        if item.kind == "image":
            if not self.vision:
                raise MediaRejected(f"{model_name} does not take images")
            pic = decode_image(item, label, self.limits, pixels_left)
            buf = (ctypes.c_uint8 * len(pic.rgb)).from_buffer_copy(pic.rgb)
            bitmap = m.mtmd_bitmap_init(pic.width, pic.height, buf)
        else:
            if not self.audio:
                raise MediaRejected(f"{model_name} does not take audio")
            bitmap = self._audio_bitmap(item, label)
        if not bitmap:
            raise RuntimeFailure(f"libmtmd made no bitmap of {label}")
        return bitmap

    def _audio_bitmap(self, item: Media, label: str) -> Any:
        """A checked clip (WAV or MP3 by its bytes) decoded by PyAV into 16 kHz mono samples, bounded
        by :attr:`MediaLimits.audio_seconds` as it decodes (an hour-long MP3 of a few MiB costs only
        the limit's worth of decoding); empty, non-audio and truncated files are 400s, too long 413."""
        from ffruntime.audio import SAMPLE_RATE, AudioRejected, decode

        audio_format(item, label, self.limits)
        rate = int(self.m.mtmd_get_audio_sample_rate(self.ctx))
        if rate != SAMPLE_RATE:
            raise RuntimeFailure(f"the projector takes {rate} Hz audio; ff decodes clips at {SAMPLE_RATE} Hz")
        try:
            samples = np.ascontiguousarray(decode(item.data, self.limits.audio_seconds).samples)
        except AudioRejected as exc:
            raise MediaRejected(f"{label}: {exc}") from None
        ptr = samples.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        return self.m.mtmd_bitmap_init_from_audio(samples.size, ptr)

    def _tokenize(self, text: str, bitmaps: list[Any], add_special: bool) -> MediaPrompt:
        m = self.m
        if text.count(MARKER) != len(bitmaps):
            n = text.count(MARKER)
            raise MediaRejected(f"the prompt holds {n} media markers for {len(bitmaps)} items")
        raw = text.encode()
        inp = m.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), add_special, True
        arr = (m.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
        chunks = m.mtmd_input_chunks_init()
        try:
            with self._lock, captured_log() as log:
                rc = m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                why = log_tail(log)
                raise MediaRejected(f"libmtmd cannot tokenize the prompt with its media ({rc}): {why}")
            tokens: list[int] = []
            parts: list[MediaPart] = []
            for i in range(int(m.mtmd_input_chunks_size(chunks))):
                chunk = m.mtmd_input_chunks_get(chunks, i)
                if m.mtmd_input_chunk_get_type(chunk) == 0:  # MTMD_INPUT_CHUNK_TYPE_TEXT
                    count = ctypes.c_size_t()
                    ids = m.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    tokens.extend(int(ids[k]) for k in range(count.value))
                    continue
                digest = (m.mtmd_input_chunk_get_id(chunk) or b"").decode()
                n_tok = int(m.mtmd_input_chunk_get_n_tokens(chunk))
                part = MediaPart(m.mtmd_input_chunk_copy(chunk), digest, len(tokens), n_tok,
                                 int(m.mtmd_input_chunk_get_n_pos(chunk)))
                parts.append(part)
                tokens.extend([pseudo_token(digest)] * n_tok)
        finally:
            m.mtmd_input_chunks_free(chunks)
        prompt = MediaPrompt(tokens, parts, self)
        if parts and parts[-1].start + parts[-1].n_tokens == len(tokens):
            prompt.close()
            raise MediaRejected("the prompt ends with an image or clip: put text after it")
        for p in parts:
            self._queue.put(p)
        return prompt

    # --- the encoder thread ---------------------------------------------------------------------------
    def _encode_loop(self) -> None:
        while (part := self._queue.get()) is not None:
            try:
                part.embd = self._embeddings(part)
            except Exception as exc:  # this item only
                part.error = exc
            part.done.set()
            self._wake()

    def _embeddings(self, part: MediaPart) -> npt.NDArray[np.float32]:
        with self._lock:
            hit = self._cache.get(part.digest)
            if hit is not None and hit.shape[0] == part.n_tokens:
                self._cache.move_to_end(part.digest)
                self.cache_hits += 1
                return hit
            if not part.chunk or not self.ctx:
                raise RuntimeFailure("the request ended before its media were encoded")
            t0 = time.perf_counter()
            with captured_log() as log:
                rc = self.m.mtmd_encode_chunk(self.ctx, part.chunk)
            self.encode_seconds += time.perf_counter() - t0
            self.last_tokens = part.n_tokens
            if rc != 0:
                raise RuntimeFailure(f"libmtmd could not encode an image or clip ({rc}): {log_tail(log)}")
            out = self.m.mtmd_get_output_embd(self.ctx)
            embd = np.ctypeslib.as_array(out, shape=(part.n_tokens * self.n_embd,)).copy()
            embd = embd.reshape(part.n_tokens, self.n_embd)
            self.encoded += 1
            self._cache[part.digest] = embd
            self._cached_bytes += embd.nbytes
            while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
            return embd

    # --- the engine thread ----------------------------------------------------------------------------
    def decode(self, ctx: Any, part: MediaPart, seq_id: int, pos: int, n_batch: int) -> int:
        assert part.embd is not None
        new_pos = self.lc.llama_pos(0)
        ptr = part.embd.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        rc = self.m.mtmd_helper_decode_image_chunk(self.ctx, ctx, part.chunk, ptr, pos, seq_id, n_batch,
                                                   ctypes.byref(new_pos), self._no_callback, None)
        if rc != 0:
            raise RuntimeFailure(f"llama.cpp could not decode an image's embeddings ({rc})")
        return int(new_pos.value)
