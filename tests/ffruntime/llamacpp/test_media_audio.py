"""Audio through llama.cpp's projector (libmtmd) in the batching engine, on the tiny random Qwen2-Audio
(tests/models.py; projector type QWEN2A): for an espeak-ng speech clip its audio embeddings and the
greedy tokens of a chat with the clip agree with transformers'; clips and text share the engine; the
audio model refuses images; hostile clips are refused before libmtmd sees them."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import ffruntime
from ffruntime.llamacpp.runtime import LlamaCppRuntime
from ffruntime.runtime import Capability, ChatMessage, GenerationRequest, Media, MediaRejected, MediaTooLarge
from ffruntime.settings import LoadSettings, MediaLimits
from tests.ffruntime.llamacpp.test_engine import stored
from tests.ffruntime.llamacpp.test_media import png, run
from tests.models import multimodal_ggufs

pytestmark = pytest.mark.slow
TOKENS_PER_WINDOW = 750  # libmtmd encodes 30 s windows of 3000 mel frames: conv stride 2, avg-pool 2
QUESTION = "What is said?"


@pytest.fixture(scope="module")
def clip(paris_wav: Path) -> bytes:
    return wav_16k(paris_wav)


@pytest.fixture(scope="module")
def qwen2audio_f32(qwen2audio_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Qwen2-Audio's text model and projector at f32 (numeric agreement is the point)."""
    return multimodal_ggufs(qwen2audio_hf, tmp_path_factory.mktemp("qwen2audio-f32"), "f32")


@pytest.fixture(scope="module")
def rt(qwen2audio_f32: tuple[Path, Path],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppRuntime]:
    model, projector = qwen2audio_f32
    v, files = stored(tmp_path_factory.mktemp("alm"), model, "alm")
    files = dataclasses.replace(files, projector=projector)
    limits = MediaLimits(audio_seconds=40.0)
    runtime = asyncio.run(ffruntime.load(v, files, LoadSettings(num_parallel=4, num_ctx=1024, media=limits)))
    assert isinstance(runtime, LlamaCppRuntime)
    yield runtime
    asyncio.run(runtime.close())


def ask(audio: bytes | None, text: str = QUESTION, n: int = 16, mime: str = "audio/wav") -> GenerationRequest:
    media = (Media(audio, "audio", mime),) if audio is not None else ()
    return GenerationRequest(messages=[ChatMessage("user", text, media=media)],
                             options={"temperature": 0, "num_predict": n})


def samples(wav: bytes) -> npt.NDArray[np.float32]:
    with wave.open(io.BytesIO(wav)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    return (pcm.astype(np.float32) / 32768).astype(np.float32)


def hf_model(folder: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    model = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model.train(False)  # inference mode
    return model


def hf_features(folder: Path, wav: bytes):  # type: ignore[no-untyped-def]
    """transformers' log-mel features of the clip, padded to the 30 s window libmtmd encodes."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(folder)
    return fe(samples(wav), sampling_rate=16000, return_tensors="pt", padding="max_length")["input_features"]


def test_capabilities(rt: LlamaCppRuntime) -> None:
    assert Capability.AUDIO in rt.capabilities and Capability.VISION not in rt.capabilities


def test_audio_embeddings_match_transformers(rt: LlamaCppRuntime, qwen2audio_hf: Path, clip: bytes) -> None:
    import torch

    assert rt.projector is not None
    prompt = rt.projector.prompt("<__media__>x", [Media(clip, "audio", "audio/wav")], add_special=False,
                                 model_name="alm")
    try:
        (part,) = prompt.parts
        assert part.done.wait(60) and part.error is None and part.embd is not None
        mine = part.embd
    finally:
        prompt.close()
    m = hf_model(qwen2audio_hf)
    with torch.no_grad():  # the whole window unmasked, as libmtmd encodes it
        hidden = m.model.audio_tower(hf_features(qwen2audio_hf, clip)).last_hidden_state
        ref = m.model.multi_modal_projector(hidden)[0].numpy()
    assert mine.shape == ref.shape == (TOKENS_PER_WINDOW, 64)
    cos = (mine * ref).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.9999, cos.min()  # measured 0.9999997 (f32 on both sides)


def test_greedy_tokens_match_transformers_generate(rt: LlamaCppRuntime, qwen2audio_hf: Path,
                                                   clip: bytes) -> None:
    import torch

    _, done = asyncio.run(run(rt, ask(clip)))
    prompt = list(done.context[: done.prompt_tokens])
    mine = list(done.context[done.prompt_tokens:])
    assert sum(t < 0 for t in prompt) == TOKENS_PER_WINDOW
    assert done.completion_tokens == 16 or done.reason == "stop"
    m = hf_model(qwen2audio_hf)
    audio_id = m.config.audio_token_id
    ids = torch.tensor([[t if t >= 0 else audio_id for t in prompt]])
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         input_features=hf_features(qwen2audio_hf, clip),
                         feature_attention_mask=torch.ones(1, 3000, dtype=torch.long),
                         max_new_tokens=16, do_sample=False)
    theirs = out[0, ids.shape[1]:].tolist()
    assert mine == theirs[: len(mine)], (mine, theirs)


def test_clips_and_text_share_the_engine(rt: LlamaCppRuntime, clip: bytes) -> None:
    """Half the requests with a clip (two different clips), all at once: each answers as it does alone."""
    quiet = wav_tone(2.0)

    def reqs() -> list[GenerationRequest]:
        return [ask([clip, quiet][i // 2 % 2], n=6) if i % 2 == 0 else ask(None, f"Say {i}.", n=6)
                for i in range(8)]

    async def alone() -> list[str]:
        return [(await run(rt, r))[0] for r in reqs()]

    async def together() -> list[str]:
        return [t for t, _ in await asyncio.gather(*(run(rt, r) for r in reqs()))]

    first = asyncio.run(alone())
    assert asyncio.run(together()) == first


def wav_16k(src: Path) -> bytes:
    """``src`` (any audio file) as 16 kHz mono 16-bit WAV bytes (PyAV's resampler): the rate Whisper-style
    encoders take, so libmtmd and transformers read the very same samples."""
    import av

    pcm = bytearray()
    with av.open(str(src)) as f:
        rs = av.AudioResampler(format="s16", layout="mono", rate=16000)
        for frame in [*f.decode(audio=0), None]:
            for out in rs.resample(frame):
                pcm += out.to_ndarray().astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(pcm))
    return buf.getvalue()


def wav_tone(seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    pcm = (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def test_audio_model_refuses_images(rt: LlamaCppRuntime) -> None:
    req = GenerationRequest(messages=[ChatMessage("user", QUESTION, media=(Media(png(1)),))],
                            options={"num_predict": 2})
    with pytest.raises(MediaRejected, match="does not take images"):
        asyncio.run(run(rt, req))


@pytest.mark.parametrize(("data", "match"), [
    (b"", "neither WAV nor MP3"),
    (b"RIFF\x00\x00\x00\x00WAVEnot really", "cannot decode|no audio"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "neither WAV nor MP3"),
])
def test_hostile_clips_are_refused(rt: LlamaCppRuntime, data: bytes, match: str) -> None:
    with pytest.raises(MediaRejected, match=match):
        asyncio.run(run(rt, ask(data)))


def test_truncated_and_long_clips(rt: LlamaCppRuntime) -> None:
    whole = wav_tone(3.0)
    with pytest.raises(MediaRejected, match="truncated"):
        asyncio.run(run(rt, ask(whole[: len(whole) // 2])))
    with pytest.raises(MediaTooLarge, match=r"limit of 40 s|limit is 40 s"):
        asyncio.run(run(rt, ask(wav_tone(41.0))))
    text, _ = asyncio.run(run(rt, ask(None, "Say hi.", n=2)))  # still serving
    assert text
