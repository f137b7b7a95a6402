"""OpenAI's audio API on the wire: the multipart form of ``/v1/audio/transcriptions`` and
``/v1/audio/translations`` (as the ``openai`` client sends it), and the answer in each
``response_format``: ``json``, ``text``, ``srt``, ``vtt``, ``verbose_json`` (segments, and words when
``timestamp_granularities[]`` asks for them).

The form is read by Starlette (python-multipart): the body's size is bounded by the server's
``max_body_bytes`` before this code runs; text fields are short and checked here, each a 400 naming it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from ffruntime.runtime import Segment, TranscriptionInfo, transcript
from ffserve.errors import BadRequest

Format = Literal["json", "text", "srt", "vtt", "verbose_json"]
FORMATS: Final[tuple[str, ...]] = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES: Final = ("word", "segment")
MAX_FIELD: Final = 64 * 1024  # bytes of one text field (a prompt)
LANGUAGE_NAMES: Final = {
    "en": "english", "de": "german", "es": "spanish", "fr": "french", "it": "italian", "ja": "japanese",
    "nl": "dutch", "pt": "portuguese", "ru": "russian", "zh": "chinese", "ko": "korean", "pl": "polish",
}  # fmt: skip
"""Whisper language codes → the names OpenAI's ``verbose_json`` gives (others are given as their code)."""


@dataclass(frozen=True)
class AudioForm:
    audio: bytes
    filename: str
    model: str
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    response_format: Format = "json"
    granularities: tuple[str, ...] = ()
    stream: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name}: expected a text field, not a file")
    return value


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise BadRequest(f"{name}: expected true or false, not {value[:20]!r}")


async def parse_form(request: Request, *, translation: bool) -> AudioForm:
    """The audio request's form; 400 for anything missing or malformed."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequest("the audio API takes multipart/form-data with a 'file' part")
    try:
        form = await request.form(max_files=1, max_fields=32, max_part_size=MAX_FIELD)
    except (AssertionError, ValueError) as exc:  # Starlette reports a bad multipart body these ways
        raise BadRequest(f"cannot read the multipart form: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ == "MultiPartException":  # starlette.formparsers, private module
            raise BadRequest(f"cannot read the multipart form: {exc}") from None
        raise
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise BadRequest("file: an audio file part named 'file' is required")
    model = _text(form, "model")
    if not model:
        raise BadRequest("model: required")
    fmt = _text(form, "response_format") or "json"
    if fmt not in FORMATS:
        raise BadRequest(f"response_format: one of {', '.join(FORMATS)}, not {fmt[:20]!r}")
    temperature = 0.0
    if (t := _text(form, "temperature")) is not None:
        try:
            temperature = float(t)
        except ValueError:
            raise BadRequest(f"temperature: not a number: {t[:20]!r}") from None
        if not math.isfinite(temperature) or not 0.0 <= temperature <= 1.0:
            raise BadRequest("temperature: between 0 and 1")
    language = _text(form, "language") or None
    if language is not None and (translation or not language.isascii() or not 2 <= len(language) <= 3):
        raise BadRequest(
            "language: translations take none" if translation else "language: an ISO-639-1 code such as 'en'"
        )
    granularities = tuple(v for v in form.getlist("timestamp_granularities[]") if isinstance(v, str))
    if any(g not in GRANULARITIES for g in granularities):
        raise BadRequest("timestamp_granularities[]: word and/or segment")
    stream = _bool(_text(form, "stream"), "stream")
    if stream and translation:
        raise BadRequest("stream: translations are not streamed")
    audio = await upload.read()
    return AudioForm(
        audio=audio,
        filename=upload.filename or "",
        model=model,
        language=language.lower() if language else None,
        prompt=_text(form, "prompt") or None,
        temperature=temperature,
        response_format=fmt,  # type: ignore[arg-type]
        granularities=granularities,
        stream=stream,
    )


def _stamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt(segments: Sequence[Segment]) -> str:
    return "".join(
        f"{i}\n{_stamp(s.start, ',')} --> {_stamp(s.end, ',')}\n{s.text.strip()}\n\n"
        for i, s in enumerate(segments, 1)
    )


def vtt(segments: Sequence[Segment]) -> str:
    cues = "".join(f"{_stamp(s.start, '.')} --> {_stamp(s.end, '.')}\n{s.text.strip()}\n\n" for s in segments)
    return "WEBVTT\n\n" + cues


def text_of(segments: Sequence[Segment]) -> str:
    return transcript([s.text for s in segments])


def verbose(
    task: str, info: TranscriptionInfo, segments: Sequence[Segment], granularities: Sequence[str]
) -> dict[str, object]:
    """``verbose_json``: segments unless only words were asked for, words when asked for."""
    out: dict[str, object] = {
        "task": task,
        "language": LANGUAGE_NAMES.get(info.language, info.language),
        "duration": round(info.duration, 3),
        "text": text_of(segments),
    }
    if "segment" in granularities or not granularities:
        out["segments"] = [
            {
                "id": s.id,
                "seek": int(s.start * 100),
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }
            for s in segments
        ]
    if "word" in granularities:
        out["words"] = [
            {"word": w.word.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in segments
            for w in s.words
        ]
    return out
