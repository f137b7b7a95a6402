"""Speech to text through ``ff serve``: the unmodified ``openai`` client on /v1/audio, ``tritonclient`` on
/v2, and hostile audio answered with a 4xx while the server keeps serving."""

from __future__ import annotations

import concurrent.futures
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.ffserve.serve_testkit import Server, start_server

MAX_BODY = 6 * 1024 * 1024


@pytest.fixture(scope="module")
def server(whisper_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    logs = tmp_path_factory.mktemp("audio-logs")
    with start_server(
        whisper_home, logs, FF_NUM_THREADS="2", FF_NUM_PARALLEL="2", FF_MAX_BODY_BYTES=str(MAX_BODY),
        FF_MAX_AUDIO_SECONDS="120",
    ) as s:
        yield s


@pytest.fixture(scope="module")
def ai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


MODEL = "whisper:tiny-int8-cpu"


@pytest.mark.parametrize("fmt", ["json", "text", "srt", "vtt", "verbose_json"])
def test_every_response_format_hears_paris(ai: openai.OpenAI, paris_wav: Path, fmt: str) -> None:
    with open(paris_wav, "rb") as f:
        got = ai.audio.transcriptions.create(model=MODEL, file=f, response_format=fmt)  # type: ignore[call-overload]
    text = got if isinstance(got, str) else got.text
    assert "Paris" in text
    if fmt == "srt":
        assert text.startswith("1\n00:00:00,000 --> 00:00:0")
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n00:00:00.000 --> ")
    if fmt == "verbose_json":
        assert got.language == "english" and 4 < got.duration < 6
        assert got.segments and got.segments[0].start == 0.0 and "Paris" in got.segments[0].text
        assert got.words is None


def test_words_and_segments_by_timestamp_granularities(ai: openai.OpenAI, paris_wav: Path) -> None:
    with open(paris_wav, "rb") as f:
        got = ai.audio.transcriptions.create(
            model=MODEL,
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            language="en",
            temperature=0.0,
            prompt="Geography.",
        )
    assert got.words and any(w.word.startswith("Paris") for w in got.words)
    starts = [w.start for w in got.words]
    assert starts == sorted(starts) and got.words[-1].end <= got.duration + 0.5
    assert got.segments


def test_streamed_transcript_deltas_and_done(ai: openai.OpenAI, paris_wav: Path) -> None:
    with open(paris_wav, "rb") as f:
        stream = ai.audio.transcriptions.create(model=MODEL, file=f, stream=True)
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done" and kinds[:-1] and set(kinds[:-1]) == {"transcript.text.delta"}
    deltas = "".join(e.delta for e in events[:-1])  # type: ignore[union-attr]
    assert "Paris" in deltas and deltas.strip() == events[-1].text  # type: ignore[union-attr]


def test_translation_route(ai: openai.OpenAI, paris_wav: Path) -> None:
    with open(paris_wav, "rb") as f:
        got = ai.audio.translations.create(model=MODEL, file=f)
    assert "Paris" in got.text


def test_formats_ffmpeg_decodes(ai: openai.OpenAI, paris_wav: Path, tmp_path: Path) -> None:
    import av

    for suffix, codec in (("mp3", "libmp3lame"), ("ogg", "vorbis"), ("flac", "flac"), ("webm", "libopus")):
        out = tmp_path / f"paris.{suffix}"
        _transcode(paris_wav, out, codec)
        with open(out, "rb") as f:
            assert "Paris" in ai.audio.transcriptions.create(model=MODEL, file=f).text, suffix
    assert av.__version__


def _transcode(src: Path, out: Path, codec: str) -> None:
    import av

    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        rate = 48000 if codec == "libopus" else 22050
        stream = dst.add_stream(codec, rate=rate)
        assert isinstance(stream, av.AudioStream)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}  # FFmpeg's own Vorbis encoder
            stream.layout = "stereo"  # which takes two channels only
        layout = "stereo" if codec == "vorbis" else "mono"
        resampler = av.AudioResampler(format=stream.format.name, layout=layout, rate=rate)
        for frame in inp.decode(audio=0):
            for f in resampler.resample(frame):
                dst.mux(stream.encode(f))
        for f in resampler.resample(None):
            dst.mux(stream.encode(f))
        dst.mux(stream.encode(None))


def test_a_minute_of_speech_runs_batched(ai: openai.OpenAI, paris_wav: Path) -> None:
    """Audio over a minute goes through faster-whisper's batched pipeline (30-second chunks)."""
    import wave

    with wave.open(str(paris_wav)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setparams(params)
        out.writeframes((frames + bytes(2 * params.framerate)) * 11)  # 11 × (4.8 s + 1 s of silence)
    got = ai.audio.transcriptions.create(
        model=MODEL, file=("long.wav", buf.getvalue()), response_format="verbose_json"
    )
    assert 60 < got.duration < 66 and got.text.count("Paris") >= 5
    assert got.segments and len(got.segments) >= 2 and got.segments[-1].end > 50


def test_four_clients_at_once(ai: openai.OpenAI, paris_wav: Path) -> None:
    def one(_: int) -> str:
        with open(paris_wav, "rb") as f:
            return ai.audio.transcriptions.create(model=MODEL, file=f).text

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(one, range(4)))
    assert all("Paris" in t for t in texts), texts


def test_tritonclient_over_v2(server: Server, paris_wav: Path) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    meta = client.get_model_metadata(MODEL)
    assert meta["inputs"] == [{"name": "audio", "datatype": "BYTES", "shape": [1]}]
    audio = triton.InferInput("audio", [1], "BYTES")
    audio.set_data_from_numpy(np.array([paris_wav.read_bytes()], dtype=object), binary_data=True)
    result = client.infer(MODEL, [audio], outputs=[triton.InferRequestedOutput("text", binary_data=True)])
    text = result.as_numpy("text")[0].decode()
    assert "Paris" in text


def _silence_mp3(seconds: int) -> bytes:
    """``seconds`` of silence as MP3 (8 kHz, 8 kbit/s; about 1 KB a second): six seconds encoded by
    LAME through PyAV, repeated (MP3 frames stand alone; no Xing header states the length)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3", options={"write_xing": "0", "id3v2_version": "0"}) as dst:
        stream = dst.add_stream("libmp3lame", rate=8000)
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = 8000
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 48000), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            dst.mux(packet)
    return buf.getvalue() * (seconds // 6)


def _post(server: Server, data: bytes, name: str) -> httpx.Response:
    files = {"file": (name, data, "application/octet-stream")}
    return httpx.post(server.url + "/v1/audio/transcriptions", files=files, data={"model": MODEL}, timeout=60)


def test_hostile_audio_gets_a_4xx_and_the_server_goes_on(server: Server, paris_wav: Path) -> None:
    wav = paris_wav.read_bytes()
    png = b"\x89PNG\r\n\x1a\n" + bytes(2000)
    hour = _silence_mp3(3600)
    assert len(hour) < MAX_BODY
    cases = {
        "empty": (b"", "clip.wav", 400, "empty"),
        "truncated": (wav[: len(wav) // 2], "clip.wav", 400, "truncated"),
        "not audio": (b"hello, this is a text file\n" * 40, "notes.wav", 400, "cannot decode"),
        "lying extension": (png, "clip.mp3", 400, "no audio"),
        "an hour of silence": (hour, "quiet.mp3", 413, "limit"),
        "over FF_MAX_AUDIO_SECONDS": (_silence_mp3(150), "quiet.mp3", 413, "the limit is 120 s"),
        "over the size limit": (bytes(MAX_BODY + 1), "big.wav", 413, "larger than"),
    }
    for case, (data, name, status, words) in cases.items():
        reply = _post(server, data, name)
        assert reply.status_code == status, (case, reply.text)
        assert words in reply.json()["error"]["message"], (case, reply.text)
    assert _post(server, b"RIFF" + bytes(40), "x.wav").status_code == 400
    assert "Paris" in _post(server, wav, "clip.wav").json()["text"]  # still serving


def test_bad_forms_are_400(server: Server, paris_wav: Path) -> None:
    url = server.url + "/v1/audio/transcriptions"
    files = {"file": ("a.wav", paris_wav.read_bytes())}
    assert httpx.post(url, data={"model": MODEL}, timeout=30).status_code == 400  # no file
    assert httpx.post(url, files=files, timeout=30).status_code == 400  # no model
    bad = {"model": MODEL, "response_format": "xml"}
    assert httpx.post(url, files=files, data=bad, timeout=30).status_code == 400
    hot = {"model": MODEL, "temperature": "7"}
    assert httpx.post(url, files=files, data=hot, timeout=30).status_code == 400
    assert httpx.post(url, json={"model": MODEL}, timeout=30).status_code == 400
    missing = httpx.post(url, files=files, data={"model": "nothing:here"}, timeout=30)
    assert missing.status_code == 404
