"""Images through ``ff serve`` to the unmodified ``ollama`` and ``openai`` clients, on the tiny random
Qwen2-VL built from a Modelfile with two FROM lines (model GGUF + projector GGUF, Ollama's form);
hostile images each get a 4xx and the server keeps serving; a text-only model refuses images."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import Server, ff_build, start_server
from tests.models import add_model

pytestmark = pytest.mark.slow
MODEL = "vlm:latest"


def png(seed: int, side: int = 64, fmt: str = "PNG") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def server(qwen2vl_ggufs: tuple[Path, Path], smollm2_gguf: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("media-home")
    model, projector = qwen2vl_ggufs
    params = "PARAMETER temperature 0\nPARAMETER num_predict 8\n"
    ff_build(home, f"FROM {model}\nFROM {projector}\n{params}", MODEL, "--no-verify")
    add_model(Store(home / "store"), "text:latest", {"q4_1": smollm2_gguf}, params={"num_predict": 4})
    with start_server(home, tmp_path_factory.mktemp("logs"), FF_NUM_PARALLEL="4", FF_NUM_CTX="512",
                      FF_MAX_IMAGE_PIXELS=str(128 * 128)) as s:
        yield s


def image_message(image: bytes, mime: str = "image/png") -> list[dict[str, object]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": data_url(image, mime)}}]}]


def test_show_lists_vision(server: Server) -> None:
    caps = httpx.post(server.url + "/api/show", json={"model": MODEL}).json()["capabilities"]
    assert "vision" in caps and "completion" in caps
    text_caps = httpx.post(server.url + "/api/show", json={"model": "text"}).json()["capabilities"]
    assert "vision" not in text_caps


def test_ollama_client_images(oc: ollama.Client) -> None:
    msg = {"role": "user", "content": "What is this?", "images": [png(1)]}
    whole = oc.chat(MODEL, messages=[msg])
    assert whole.message.content and whole.done_reason == "length" and whole.eval_count == 8
    streamed = "".join(part.message.content or "" for part in oc.chat(MODEL, messages=[msg], stream=True))
    assert streamed == whole.message.content
    gen = oc.generate(MODEL, prompt="Describe it.", images=[png(2)])
    assert gen.response and (gen.prompt_eval_count or 0) > 9  # the image's tokens are prompt tokens


def test_openai_client_image_url(ai: openai.OpenAI) -> None:
    whole = ai.chat.completions.create(model=MODEL, messages=image_message(png(3)))  # type: ignore[arg-type]
    assert whole.choices[0].message.content
    stream = ai.chat.completions.create(
        model=MODEL, messages=image_message(png(3)), stream=True  # type: ignore[arg-type]
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)  # type: ignore[union-attr]
    assert text == whole.choices[0].message.content


def test_eight_at_once_half_with_images(ai: openai.OpenAI) -> None:
    def one(i: int) -> str:
        messages = image_message(png(20 + i)) if i % 2 == 0 else [{"role": "user", "content": f"Say {i}."}]
        r = ai.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
        assert r.choices[0].finish_reason == "length"
        return r.choices[0].message.content or ""

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    assert all(answers)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb() -> bytes:
    """A PNG declaring 30000 × 30000 pixels (2.7 GB of RGB) in a few hundred bytes."""
    head = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * 30000) * 4)
    chunks = _png_chunk(b"IHDR", head) + _png_chunk(b"IDAT", rows) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def animated() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


HOSTILE = {
    "bomb": (bomb(), "image/png", 413, "pixels"),
    "lying MIME": (png(4, fmt="JPEG"), "image/png", 400, "declared image/png but holds a JPEG"),
    "truncated": (png(5)[:600], "image/png", 400, "truncated or corrupt"),
    "animated": (animated(), "image/gif", 400, "animated (2 frames)"),
    "not an image": (b"just some text, not pixels", "image/png", 400, "not an image"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_image_is_a_4xx_and_the_server_keeps_serving(server: Server, case: str) -> None:
    data, mime, status, words = HOSTILE[case]
    body = {"model": MODEL, "messages": image_message(data, mime)}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    r = httpx.post(server.url + "/api/chat", timeout=60, json={
        "model": MODEL, "stream": False,
        "messages": [{"role": "user", "content": "hi", "images": [base64.b64encode(data).decode()]}]})
    if case == "lying MIME":  # Ollama's base64 declares no type: a JPEG is a JPEG
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == status and words in r.json()["error"]
    ok = httpx.post(server.url + "/api/chat", timeout=60, json={
        "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi", "images": [
            base64.b64encode(png(6)).decode()]}]})
    assert ok.status_code == 200 and ok.json()["message"]["content"]


def test_the_operator_sets_the_pixel_limit(server: Server) -> None:
    """FF_MAX_IMAGE_PIXELS (128² here) reaches the model: a 160×160 picture, fine at the default, is a 413."""
    r = httpx.post(server.url + "/api/chat", timeout=60, json={"model": MODEL, "stream": False, "messages": [
        {"role": "user", "content": "hi", "images": [base64.b64encode(png(8, side=160)).decode()]}]})
    assert r.status_code == 413 and "160×160 pixels; at most 16384 per image" in r.json()["error"], r.text


def test_transport_errors(server: Server) -> None:
    url = server.url + "/v1/chat/completions"
    remote = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]
    r = httpx.post(url, json={"model": MODEL, "messages": remote})
    assert r.status_code == 400 and "FF_ALLOW_REMOTE_IMAGES" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "x", "images": ["%%%"]})
    assert r.status_code == 400 and "images.0: not valid base64" in r.json()["error"]
    audio = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==",
                                                                                  "format": "wav"}}]}]
    r = httpx.post(url, json={"model": MODEL, "messages": audio})
    assert r.status_code == 400 and "vlm:latest does not take audio" in r.json()["error"]["message"]


def test_text_only_model_refuses_images(server: Server) -> None:
    r = httpx.post(server.url + "/api/chat", json={"model": "text", "stream": False, "messages": [
        {"role": "user", "content": "hi", "images": [base64.b64encode(png(7)).decode()]}]}, timeout=60)
    assert r.status_code == 400 and "text:latest does not take images" in r.json()["error"], r.text
