"""``ff run name:tag --audio clip.wav``: a speech model's transcript, through ``ff serve`` when one answers.

With a server at ``$FF_HOST`` the file goes to ``POST /v1/audio/transcriptions`` (``response_format=text``,
as the ``openai`` client sends it); otherwise the variant is loaded here through :func:`ffruntime.load`,
as the server loads it, and the segments are printed as they are decoded.
"""

from __future__ import annotations

import contextlib
import json
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import click

from registry.artifact import ModelFiles, VariantRef


def _multipart(fields: dict[str, str], audio: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{audio.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body = b"".join(parts) + head + audio.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def transcribe_server(
    url: str, model: str, audio: Path, prompt: str | None, temperature: float | None
) -> str:
    """The server's transcript of ``audio``."""
    fields = {"model": model, "response_format": "text"}
    if prompt:
        fields["prompt"] = prompt
    if temperature is not None:
        fields["temperature"] = str(temperature)
    body, content_type = _multipart(fields, audio)
    req = urllib.request.Request(
        f"{url}/v1/audio/transcriptions", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return str(resp.read().decode("utf-8")).strip()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = str(json.loads(detail)["error"]["message"])
        raise click.ClickException(f"the server at {url} answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the server at {url}: {exc}") from None


async def transcribe_local(
    variant: VariantRef,
    files: ModelFiles,
    audio: Path,
    prompt: str | None,
    temperature: float | None,
    threads: int | None,
) -> AsyncIterator[str]:
    """Load ``variant`` through ffruntime (as ``ff serve`` does) and stream the transcript's segments."""
    import ffruntime
    from ffruntime.errors import BackendUnavailable, RuntimeFailure
    from ffruntime.runtime import RequestRejected, TranscribeRuntime, TranscriptionRequest, piece
    from ffruntime.settings import LoadSettings

    try:
        runtime = await ffruntime.load(variant, files, LoadSettings(threads=threads or 0))
    except (BackendUnavailable, RuntimeFailure, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load {variant.name}: {exc}") from None
    try:
        if not isinstance(runtime, TranscribeRuntime):
            raise click.ClickException(f"{variant.name} is not a speech-to-text model (TASK transcribe)")
        request = TranscriptionRequest(audio=audio.read_bytes(), prompt=prompt, temperature=temperature)
        try:
            _, segments = await runtime.transcribe(request)
            first = True
            async for s in segments:
                yield piece(s.text, first)
                first = False
        except RequestRejected as exc:
            raise click.ClickException(f"{audio}: {exc}") from None
    finally:
        await runtime.close()


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
