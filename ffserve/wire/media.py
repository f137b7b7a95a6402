"""Images and audio as clients send them, turned into :class:`~ffruntime.runtime.Media` (bytes + kind).

- Ollama: ``images`` on ``/api/generate`` and on ``/api/chat`` messages, each plain base64 (a data URL
  is taken too, as Ollama does);
- OpenAI: content parts ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,…"}}`` and
  ``{"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"|"mp3"}}``. A remote
  ``http(s)://`` image URL is refused unless ``FF_ALLOW_REMOTE_IMAGES`` is on; then it is fetched with a
  timeout and a size bound (:data:`FETCH_TIMEOUT_S`, the request's body limit).

Only the transport is checked here (base64, data URL syntax, the fetch); what the bytes hold is checked
when the runtime decodes them (:mod:`ffruntime.images`).
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.error
import urllib.request

from ffruntime.runtime import Media, MediaKind
from ffserve.errors import BadRequest, BodyTooLarge

FETCH_TIMEOUT_S = 10.0
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,",
                       re.ASCII)


def b64_bytes(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None


def data_url(url: str, where: str, kind: MediaKind) -> Media:
    """A ``data:`` URL's bytes and declared MIME type (base64 only)."""
    m = _DATA_URL.match(url)
    if m is None or not m.group("b64"):
        raise BadRequest(f"{where}: expected a base64 data URL (data:image/png;base64,…)")
    mime = m.group("mime")
    if mime is not None and not mime.lower().startswith(f"{kind}/"):
        raise BadRequest(f"{where}: a data URL of {mime} is not an {kind}")
    return Media(b64_bytes(url[m.end():], where), kind, mime)


def ollama_image(value: str, where: str) -> Media:
    """One entry of Ollama's ``images``: base64, or a data URL."""
    if value.startswith("data:"):
        return data_url(value, where, "image")
    return Media(b64_bytes(value, where), "image")


def image_url(url: str, where: str, *, allow_remote: bool, max_bytes: int) -> Media:
    """An OpenAI ``image_url``: a data URL, or (when allowed) an http(s) URL fetched here."""
    if url.startswith("data:"):
        return data_url(url, where, "image")
    if not url.startswith(("http://", "https://")):
        raise BadRequest(f"{where}: expected a data URL or an http(s) URL")
    if not allow_remote:
        raise BadRequest(f"{where}: remote image URLs are not fetched by this server "
                         "(FF_ALLOW_REMOTE_IMAGES is off); send the image as a base64 data URL")
    return _fetch(url, where, max_bytes)


def _fetch(url: str, where: str, max_bytes: int) -> Media:
    req = urllib.request.Request(url, headers={"User-Agent": "ferrousforge"})
    try:
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT_S) as resp:
            data = resp.read(max_bytes + 1)
            mime = resp.headers.get_content_type()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BadRequest(f"{where}: cannot fetch {url}: {exc}") from None
    if len(data) > max_bytes:
        raise BodyTooLarge(f"{where}: {url} is over {max_bytes} bytes")
    return Media(data, "image", mime if mime.startswith("image/") else None)


def input_audio(data: str, fmt: str, where: str) -> Media:
    """An OpenAI ``input_audio`` part: base64 WAV or MP3."""
    if fmt not in ("wav", "mp3"):
        raise BadRequest(f"{where}: audio format {fmt!r}; expected wav or mp3")
    return Media(b64_bytes(data, where), "audio", fmt)
