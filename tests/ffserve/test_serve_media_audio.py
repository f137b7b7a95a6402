"""Audio through ``ff serve`` to the unmodified ``openai`` client (``input_audio`` content parts, WAV and
MP3, streamed and not), on the tiny random Qwen2-Audio built by ``ff build`` from its Hugging Face folder;
clips and text-only chats at once; hostile clips each get a 4xx and the server keeps serving."""

from __future__ import annotations

import base64
import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.ffruntime.llamacpp.test_media_audio import wav_16k, wav_tone
from tests.ffserve.serve_testkit import Server, ff_build, start_server
from tests.ffserve.test_serve_audio import _silence_mp3, _transcode

pytestmark = pytest.mark.slow
MODEL = "alm:latest"


@pytest.fixture(scope="module")
def server(qwen2audio_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("audio-media-home")
    params = "PARAMETER temperature 0\nPARAMETER num_predict 6\n"
    ff_build(home, f"FROM {qwen2audio_hf}\nQUANTIZE f16\n{params}", MODEL, "--no-verify")
    with start_server(home, tmp_path_factory.mktemp("logs"), FF_NUM_PARALLEL="4", FF_NUM_CTX="1024",
                      FF_MAX_AUDIO_SECONDS="40", FF_MAX_AUDIO_BYTES=str(2 << 20)) as s:
        yield s


@pytest.fixture(scope="module")
def clips(paris_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    mp3 = tmp_path_factory.mktemp("clips") / "paris.mp3"
    _transcode(paris_wav, mp3, "libmp3lame")
    return {"wav": wav_16k(paris_wav), "mp3": mp3.read_bytes()}


def audio_message(data: bytes, fmt: str = "wav", text: str = "What is said?") -> list[dict[str, object]]:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}
    return [{"role": "user", "content": [{"type": "text", "text": text}, part]}]


def test_show_lists_audio(server: Server) -> None:
    caps = httpx.post(server.url + "/api/show", json={"model": MODEL}).json()["capabilities"]
    assert "audio" in caps and "vision" not in caps


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_openai_client_input_audio(ai: openai.OpenAI, clips: dict[str, bytes], fmt: str) -> None:
    messages = audio_message(clips[fmt], fmt)
    whole = ai.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert whole.choices[0].message.content and whole.choices[0].finish_reason == "length"
    assert whole.usage is not None and whole.usage.prompt_tokens > 750  # one 30 s window of audio tokens
    stream = ai.chat.completions.create(model=MODEL, messages=messages, stream=True)  # type: ignore[arg-type]
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # type: ignore[union-attr]
    assert text == whole.choices[0].message.content


def test_eight_at_once_half_with_audio(ai: openai.OpenAI, clips: dict[str, bytes]) -> None:
    def one(i: int) -> str:
        if i % 2 == 0:
            fmt = "wav" if i % 4 == 0 else "mp3"
            messages = audio_message(clips[fmt], fmt, f"Clip {i}?")
        else:
            messages = [{"role": "user", "content": f"Say {i}."}]
        r = ai.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        assert r.choices[0].finish_reason == "length"
        return r.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert all(answers)


def _hostile() -> dict[str, tuple[bytes, str, int, str]]:
    tone = wav_tone(3.0)
    return {
        "empty": (b"", "wav", 400, "neither WAV nor MP3"),
        "truncated": (tone[: len(tone) // 2], "wav", 400, "truncated"),
        "not audio": (b"\x89PNG\r\n\x1a\n" + bytes(64), "wav", 400, "neither WAV nor MP3"),
        "lying format": (_silence_mp3(6), "wav", 400, "declared wav but holds MP3"),
        "over the seconds (header)": (wav_tone(41.0), "wav", 413, "limit is 40 s"),
        "over the seconds (decoded)": (_silence_mp3(60), "mp3", 413, "limit"),
        "over the bytes": (wav_tone(70.0), "wav", 413, f"at most {2 << 20}"),
    }


@pytest.mark.parametrize("case", sorted(_hostile()))
def test_hostile_audio_is_a_4xx_and_the_server_keeps_serving(server: Server, clips: dict[str, bytes],
                                                             case: str) -> None:
    data, fmt, status, words = _hostile()[case]
    body = {"model": MODEL, "messages": audio_message(data, fmt)}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.text
    ok = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                    json={"model": MODEL, "messages": audio_message(clips["wav"])})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"]


def test_a_clip_over_the_context_is_a_400(server: Server) -> None:
    """35 s of audio is two 30 s windows (1500 tokens): more than the 1024-token context."""
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"model": MODEL, "messages": audio_message(wav_tone(35.0))})
    assert r.status_code == 400 and "the context is 1024" in r.json()["error"]["message"], r.text
    ok = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200
