"""The ctranslate2 backend: a stored CTranslate2 Whisper variant served by faster-whisper.

The variant's layers (``model.bin``, ``config.json``, ``tokenizer.json``, ``vocabulary.txt``) are laid out
as symlinks under their layer paths, the folder faster-whisper's ``WhisperModel`` reads. Audio is
decoded by :mod:`ffruntime.audio` (PyAV, bounded) before any model work. Concurrent requests: the model
is loaded with ``num_workers = num_parallel`` CTranslate2 workers, so that many transcriptions run at
once (the scheduler admits that many), each decoding in its own thread. Within one request, audio
longer than :data:`BATCH_ABOVE_SECONDS` runs batched (``BatchedInferencePipeline``: its speech cut into
30-second chunks by the Silero VAD faster-whisper ships, :data:`BATCH_SIZE` chunks per model call).
``compute_type`` ``default`` keeps the stored type where the device runs it (int8 and float32 on CPUs;
float16 weights are computed in float32 on a CPU).

Besides :class:`~ffruntime.runtime.TranscribeRuntime`, the model answers the Open Inference Protocol
with one BYTES input ``audio`` (the encoded file) and one BYTES output ``text``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from ffruntime.audio import decode
from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    RequestRejected,
    Segment,
    Tensor,
    TensorSpec,
    TranscriptionInfo,
    TranscriptionRequest,
    Word,
    transcript,
)
from ffruntime.settings import LoadSettings
from ffruntime.tensors import decode_bytes, encode_bytes
from registry.artifact import ModelFiles, VariantRef

MODEL_FILE: Final = "model.bin"
AUDIO_INPUT: Final = TensorSpec("audio", "BYTES", (1,))
TEXT_OUTPUT: Final = TensorSpec("text", "BYTES", (1,))
_END: Final = object()
BATCH_ABOVE_SECONDS: Final = 60.0
"""Audio longer than this is transcribed in batches of 30-second chunks (faster-whisper's
``BatchedInferencePipeline``); shorter audio sequentially, window after window (``WhisperModel``)."""
BATCH_SIZE: Final = 8


def _segment(s: Any) -> Segment:
    words = tuple(Word(w.word, float(w.start), float(w.end), float(w.probability)) for w in s.words or ())
    return Segment(
        id=int(s.id) - 1,
        start=float(s.start),
        end=float(s.end),
        text=str(s.text),
        tokens=tuple(int(t) for t in s.tokens),
        temperature=float(s.temperature or 0.0),
        avg_logprob=float(s.avg_logprob),
        compression_ratio=float(s.compression_ratio),
        no_speech_prob=float(s.no_speech_prob),
        words=words,
    )


class WhisperRuntime:
    """A loaded Whisper model (faster-whisper's ``WhisperModel`` over CTranslate2)."""

    def __init__(self, model: Any, folder: Path, workers: int, max_seconds: float) -> None:
        from faster_whisper import BatchedInferencePipeline

        self._model = model
        self._batched = BatchedInferencePipeline(model)
        self._folder = folder
        self._workers = workers
        self.max_seconds = max_seconds
        self._memory = sum(p.stat().st_size for p in folder.iterdir())

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({Capability.TRANSCRIBE, Capability.TENSOR})

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def context_length(self) -> int:
        return int(getattr(self._model, "max_length", 448))

    @property
    def parallel(self) -> int:
        return self._workers

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    async def close(self) -> None:
        self._model = None
        await asyncio.to_thread(shutil.rmtree, self._folder, True)

    def _start(self, request: TranscriptionRequest) -> tuple[TranscriptionInfo, Iterator[Any]]:
        audio = decode(request.audio, self.max_seconds)
        if request.language is not None and not self.multilingual and request.language != "en":
            raise RequestRejected(
                f"this model is English-only; it cannot transcribe language {request.language!r}"
            )
        temperature: float | tuple[float, ...] = (
            request.temperature if request.temperature is not None else (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
        )
        # Longer than a window: its speech (found by faster-whisper's Silero VAD) goes through the model
        # in batches of 30-second chunks, one batched generate call per BATCH_SIZE chunks.
        transcribe = (
            self._batched.transcribe if audio.seconds > BATCH_ABOVE_SECONDS else self._model.transcribe
        )
        extra = {"batch_size": BATCH_SIZE} if audio.seconds > BATCH_ABOVE_SECONDS else {}
        try:
            segments, info = transcribe(
                audio.samples,
                language=request.language,
                task=request.task if self.multilingual else "transcribe",
                initial_prompt=request.prompt or None,
                temperature=temperature,
                word_timestamps=request.words,
                **extra,
            )
        except ValueError as exc:  # faster-whisper refuses an unknown language code this way
            raise RequestRejected(str(exc)) from None
        return TranscriptionInfo(str(info.language), audio.seconds), iter(segments)

    async def transcribe(
        self, request: TranscriptionRequest
    ) -> tuple[TranscriptionInfo, AsyncIterator[Segment]]:
        """Decode the audio and start transcribing; the segments come as the model decodes them."""
        info, segments = await asyncio.to_thread(self._start, request)
        return info, self._stream(segments, request.cancel)

    async def _stream(self, segments: Iterator[Any], cancel: CancelFlag) -> AsyncIterator[Segment]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                for s in segments:
                    if stop.is_set() or cancel.is_set:
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, _segment(s))
            except BaseException as exc:  # handed to the consumer, raised there
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        worker = loop.run_in_executor(None, work)
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise RuntimeFailure(f"transcription failed: {item}") from item
                assert isinstance(item, Segment)
                yield item
        finally:
            stop.set()
            await worker

    # -- Open Inference Protocol ----------------------------------------------------------------------

    @property
    def tensor_inputs(self) -> tuple[TensorSpec, ...]:
        return (AUDIO_INPUT,)

    @property
    def tensor_outputs(self) -> tuple[TensorSpec, ...]:
        return (TEXT_OUTPUT,)

    async def infer(
        self, inputs: Mapping[str, Tensor], cancel: CancelFlag, outputs: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """``audio``: one BYTES element (an encoded file) → ``text``: its transcript."""
        if set(inputs) != {AUDIO_INPUT.name}:
            raise RequestRejected(f"this model takes one BYTES input named {AUDIO_INPUT.name!r}")
        datatype, shape, raw = inputs[AUDIO_INPUT.name]
        count = int(np.prod(shape)) if shape else 1
        if datatype != "BYTES" or count != 1:
            raise RequestRejected("input 'audio' must be one BYTES element (the encoded audio file)")
        if outputs and set(outputs) != {TEXT_OUTPUT.name}:
            raise RequestRejected(f"this model has one output, {TEXT_OUTPUT.name!r}")
        (audio,) = decode_bytes(raw, 1)
        _, segments = await self.transcribe(TranscriptionRequest(audio=audio, cancel=cancel))
        text = transcript([s.text async for s in segments])
        return {TEXT_OUTPUT.name: ("BYTES", [1], encode_bytes([text.encode("utf-8")]))}


def _folder(files: Mapping[str, Path]) -> Path:
    """The variant's files under their layer paths (symlinks to the blobs), as faster-whisper reads them."""
    folder = Path(tempfile.mkdtemp(prefix="ff-whisper-"))
    try:
        for filepath, blob in files.items():
            if "/" in filepath or filepath.startswith("."):
                continue  # only the model folder's own files
            (folder / filepath).symlink_to(Path(blob).resolve())
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


async def load_files(files: dict[str, Path], settings: LoadSettings) -> WhisperRuntime:
    """Load a Whisper variant from its layer filepath → path mapping."""
    if MODEL_FILE not in files or "config.json" not in files:
        raise RuntimeFailure("a ctranslate2 variant needs model.bin and config.json layers")
    try:
        from faster_whisper import WhisperModel
    except ImportError as exc:
        raise BackendUnavailable.missing(
            exc.name or "faster_whisper", "speech", "the ctranslate2 backend"
        ) from None
    folder = _folder(files)
    device = settings.device.split(":", 1)[0]
    workers = max(1, settings.num_parallel)
    max_seconds = settings.media.audio_seconds
    try:
        model = await asyncio.to_thread(
            WhisperModel,
            str(folder),
            device=device,
            compute_type="default",
            cpu_threads=settings.n_threads,
            num_workers=workers,
            local_files_only=True,
        )
    except (RuntimeError, ValueError, OSError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeFailure(f"faster-whisper cannot load the model: {exc}") from None
    return WhisperRuntime(model, folder, workers, max_seconds)


async def load(variant: VariantRef, files: ModelFiles, settings: LoadSettings) -> WhisperRuntime:
    device = settings.device if settings.device != "cpu" else variant.target
    return await load_files(files.files, settings.with_(device=device))
