"""ffserve.wire.media: the transports of images and audio (base64, data URLs, fetched URLs when allowed)."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator

import pytest

from ffserve.errors import BadRequest, BodyTooLarge
from ffserve.wire.media import image_url, input_audio, ollama_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 40


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = PNG * (1000 if self.path == "/big.png" else 1)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_ollama_images_are_base64_or_data_urls() -> None:
    b64 = base64.b64encode(PNG).decode()
    assert ollama_image(b64, "images.0").data == PNG
    m = ollama_image(f"data:image/png;base64,{b64}", "images.0")
    assert (m.data, m.mime, m.kind) == (PNG, "image/png", "image")
    with pytest.raises(BadRequest, match=r"images\.0: not valid base64"):
        ollama_image("not base64!", "images.0")


def test_data_urls() -> None:
    b64 = base64.b64encode(PNG).decode()
    got = image_url(f"data:image/jpeg;base64,{b64}", "x", allow_remote=False, max_bytes=10)
    assert got.mime == "image/jpeg"
    with pytest.raises(BadRequest, match="a data URL of audio/wav is not an image"):
        image_url(f"data:audio/wav;base64,{b64}", "x", allow_remote=False, max_bytes=10)
    with pytest.raises(BadRequest, match="expected a base64 data URL"):
        image_url("data:image/png,rawbytes", "x", allow_remote=False, max_bytes=10)
    with pytest.raises(BadRequest, match="expected a data URL or an http"):
        image_url("file:///etc/passwd", "x", allow_remote=True, max_bytes=10)


def test_remote_urls_only_when_allowed(http_server: str) -> None:
    with pytest.raises(BadRequest, match="FF_ALLOW_REMOTE_IMAGES is off"):
        image_url(f"{http_server}/a.png", "x", allow_remote=False, max_bytes=1 << 20)
    got = image_url(f"{http_server}/a.png", "x", allow_remote=True, max_bytes=1 << 20)
    assert (got.data, got.mime) == (PNG, "image/png")
    with pytest.raises(BodyTooLarge, match="is over 1000 bytes"):
        image_url(f"{http_server}/big.png", "x", allow_remote=True, max_bytes=1000)
    with pytest.raises(BadRequest, match="cannot fetch"):
        image_url("http://127.0.0.1:9/none.png", "x", allow_remote=True, max_bytes=1000)


def test_input_audio() -> None:
    m = input_audio(base64.b64encode(b"RIFF").decode(), "wav", "a")
    assert (m.kind, m.mime, m.data) == ("audio", "wav", b"RIFF")
    with pytest.raises(BadRequest, match="audio format 'ogg'"):
        input_audio("", "ogg", "a")
