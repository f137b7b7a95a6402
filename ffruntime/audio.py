"""Audio bytes → 16 kHz mono float32 samples, decoded by PyAV (FFmpeg; what faster-whisper decodes with).

Any container and codec FFmpeg reads (wav, mp3, ogg/opus/vorbis, flac, webm, m4a …) is accepted; the
file name a client gives is never trusted, the bytes are probed. Hostile input gets bounded work:
:func:`decode` stops as soon as the decoded audio passes ``max_seconds`` (so an hour of silence costs
only the first ``max_seconds`` of decoding), and a file that is empty, is not audio, or ends before the
length its own header declares (a truncated upload: a RIFF/WAV size field, or a stream duration) is an
:class:`AudioRejected` naming what is wrong.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import MediaTooLarge, RequestRejected
from ffruntime.settings import MediaLimits

SAMPLE_RATE: Final = 16_000
DEFAULT_MAX_SECONDS: Final = MediaLimits.audio_seconds
"""The longest audio a request may hold (30 minutes), unless the operator sets ``FF_MAX_AUDIO_SECONDS``."""
_TRUNCATED: Final = 0.9  # decoded less than this share of the declared length: a truncated file


class AudioRejected(RequestRejected):
    """The bytes are not audio ff can decode (empty, not audio, truncated)."""


class AudioTooLong(MediaTooLarge):
    """The audio is longer than the limit (a 413)."""


@dataclass(frozen=True)
class Audio:
    samples: npt.NDArray[np.float32]  # mono, SAMPLE_RATE Hz, in [-1, 1]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def _declared_seconds(container: object, stream: object) -> float | None:
    """The length the file's header declares, in seconds, when it declares one."""
    duration = getattr(stream, "duration", None)
    base = getattr(stream, "time_base", None)
    if duration is not None and base is not None:
        return float(duration * base)
    total = getattr(container, "duration", None)  # in AV_TIME_BASE (microseconds)
    return float(total) / 1_000_000 if total is not None else None


def _check_riff(data: bytes) -> None:
    """A RIFF file (WAV) shorter than the size its header declares is truncated (FFmpeg would decode
    the part that came without a word)."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        declared = struct.unpack("<I", data[4:8])[0] + 8
        if declared != 0xFFFFFFFF + 8 and len(data) < declared:
            raise AudioRejected(
                f"the WAV file ends after {len(data)} of the {declared} bytes its header declares "
                "(a truncated file)"
            )


def decode(data: bytes, max_seconds: float = DEFAULT_MAX_SECONDS) -> Audio:
    """Decode ``data``; raise :class:`AudioRejected` or :class:`AudioTooLong`."""
    if not data:
        raise AudioRejected("the audio file is empty")
    _check_riff(data)
    try:
        import av
    except ImportError:
        raise BackendUnavailable.missing("av", "speech", "decoding audio") from None
    limit = int(max_seconds * SAMPLE_RATE)
    chunks: list[npt.NDArray[np.generic]] = []
    have = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioRejected("the file holds no audio stream")
            stream = container.streams.audio[0]
            declared = _declared_seconds(container, stream)
            if declared is not None and declared > max_seconds:
                raise AudioTooLong(f"the audio is {declared:.0f} s long; the limit is {max_seconds:.0f} s")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    have += len(chunk)
                if have > limit:
                    raise AudioTooLong(f"the audio is longer than the limit of {max_seconds:.0f} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except RequestRejected:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:  # PyAV raises these for bad input
        raise AudioRejected(f"cannot decode the audio: {exc}") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    if samples.size == 0:
        raise AudioRejected("the file holds no audio samples")
    if declared is not None and declared > 1.0 and samples.size < _TRUNCATED * declared * SAMPLE_RATE:
        raise AudioRejected(
            f"the audio ends after {samples.size / SAMPLE_RATE:.1f} s of the {declared:.1f} s its header "
            "declares (a truncated file)"
        )
    return Audio((samples.astype(np.float32) / 32768.0).astype(np.float32))
