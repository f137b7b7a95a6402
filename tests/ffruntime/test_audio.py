"""ffruntime.audio: PyAV decoding to 16 kHz mono, and its bounds on hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffruntime.audio import SAMPLE_RATE, AudioRejected, AudioTooLong, decode


def test_a_clip_decodes_to_16khz_mono(paris_wav: Path) -> None:
    audio = decode(paris_wav.read_bytes())
    assert audio.samples.dtype.name == "float32" and audio.samples.ndim == 1
    assert 4.7 < audio.seconds < 4.9 and len(audio.samples) == round(audio.seconds * SAMPLE_RATE)
    assert 0.05 < float(abs(audio.samples).max()) <= 1.0


def test_longer_than_the_limit_is_refused_before_decoding_it(paris_wav: Path) -> None:
    with pytest.raises(AudioTooLong, match="limit is 2 s"):
        decode(paris_wav.read_bytes(), max_seconds=2.0)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "truncated"),
        (b"%PDF-1.7\n" + bytes(500), "cannot decode"),
    ],
)
def test_not_audio_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(AudioRejected, match=words):
        decode(data)


def test_a_truncated_wav_is_refused(paris_wav: Path) -> None:
    wav = paris_wav.read_bytes()
    with pytest.raises(AudioRejected, match="truncated"):
        decode(wav[: len(wav) // 2])
