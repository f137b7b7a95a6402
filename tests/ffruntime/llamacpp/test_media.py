"""Images through llama.cpp's projector (libmtmd) in the batching engine, on the tiny random Qwen2-VL
(tests/models.py): its image embeddings and greedy tokens agree with transformers'; sequences with and
without images share the engine; an image seen before is not encoded again; a text-only model refuses."""

from __future__ import annotations

import asyncio
import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ffruntime
from ffruntime.llamacpp.runtime import LlamaCppRuntime
from ffruntime.runtime import (
    Capability,
    ChatMessage,
    Done,
    GenerationRequest,
    Media,
    MediaRejected,
    Token,
)
from ffruntime.settings import LoadSettings
from tests.ffruntime.llamacpp.test_engine import stored
from tests.models import multimodal_ggufs

pytestmark = pytest.mark.slow
SIDE = 84  # 6×6 patches of 14 px, 3×3 tokens after the 2×2 merge: llama.cpp and transformers resize alike
QUESTION = "What is in this picture?"


def png(seed: int, side: int = SIDE) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def qwen2vl_f32(qwen2vl_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny Qwen2-VL's text model and projector at f32 (numeric agreement, not size, is the point)."""
    return multimodal_ggufs(qwen2vl_hf, tmp_path_factory.mktemp("qwen2vl-f32"), "f32")


@pytest.fixture(scope="module")
def rt(qwen2vl_f32: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppRuntime]:
    model, projector = qwen2vl_f32
    v, files = stored(tmp_path_factory.mktemp("vlm"), model, "vlm")
    files = dataclasses.replace(files, projector=projector)
    runtime = asyncio.run(ffruntime.load(v, files, LoadSettings(num_parallel=4, num_ctx=256)))
    assert isinstance(runtime, LlamaCppRuntime)
    yield runtime
    asyncio.run(runtime.close())


def ask(image: bytes | None, text: str = QUESTION, n: int = 16) -> GenerationRequest:
    media = (Media(image, "image", "image/png"),) if image is not None else ()
    return GenerationRequest(messages=[ChatMessage("user", text, media=media)],
                             options={"temperature": 0, "num_predict": n})


async def run(rt: LlamaCppRuntime, req: GenerationRequest) -> tuple[str, Done]:
    text, done = "", None
    async for ev in rt.generate(req):
        if isinstance(ev, Token):
            text += ev.text
        else:
            done = ev
    assert isinstance(done, Done)
    return text, done


def hf_model(folder: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model.train(False)  # inference mode
    return model


def hf_pixels(folder: Path, image: bytes):  # type: ignore[no-untyped-def]
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    proc = Qwen2VLImageProcessorPil.from_pretrained(folder)
    return proc(images=[Image.open(io.BytesIO(image)).convert("RGB")], return_tensors="pt")


def test_capabilities(rt: LlamaCppRuntime) -> None:
    assert Capability.VISION in rt.capabilities and Capability.AUDIO not in rt.capabilities


def test_projector_embeddings_match_transformers(rt: LlamaCppRuntime, qwen2vl_hf: Path) -> None:
    import torch

    assert rt.projector is not None
    image = png(1)
    prompt = rt.projector.prompt("<__media__>x", [Media(image)], add_special=False, model_name="vlm")
    try:
        (part,) = prompt.parts
        assert part.done.wait(60) and part.error is None and part.embd is not None
        mine = part.embd
    finally:
        prompt.close()
    x = hf_pixels(qwen2vl_hf, image)
    assert x["image_grid_thw"].tolist() == [[1, 6, 6]]
    with torch.no_grad():
        theirs = hf_model(qwen2vl_hf).model.get_image_features(x["pixel_values"], x["image_grid_thw"])
    ref = theirs.pooler_output[0].numpy()
    assert mine.shape == ref.shape == (9, 64)
    cos = (mine * ref).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99, cos


def test_greedy_tokens_match_transformers_generate(rt: LlamaCppRuntime, qwen2vl_hf: Path) -> None:
    import torch

    image = png(2)
    _, done = asyncio.run(run(rt, ask(image)))
    prompt = list(done.context[: done.prompt_tokens])
    mine = list(done.context[done.prompt_tokens:])
    assert done.completion_tokens == 16 or done.reason == "stop"
    m = hf_model(qwen2vl_hf)
    image_id = m.config.image_token_id
    ids = torch.tensor([[t if t >= 0 else image_id for t in prompt]])
    x = hf_pixels(qwen2vl_hf, image)
    with torch.no_grad():
        out = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=x["pixel_values"],
                         image_grid_thw=x["image_grid_thw"], mm_token_type_ids=(ids == image_id).int(),
                         max_new_tokens=16, do_sample=False)
    theirs = out[0, ids.shape[1]:].tolist()
    assert sum(t < 0 for t in prompt) == 9
    assert mine == theirs[: len(mine)], (mine, theirs)


def test_images_and_text_share_the_engine(rt: LlamaCppRuntime) -> None:
    """Half the requests with images, all at once: each answers as it does alone; the second sight of an
    image is not encoded again."""
    def reqs() -> list[GenerationRequest]:  # new ones each time: a finished request's cancel flag is set
        return [ask(png(10 + i)) if i % 2 == 0 else ask(None, f"Say {i}.") for i in range(8)]

    async def alone() -> list[str]:
        return [(await run(rt, r))[0] for r in reqs()]

    async def together() -> list[str]:
        return [t for t, _ in await asyncio.gather(*(run(rt, r) for r in reqs()))]

    assert rt.projector is not None
    first = asyncio.run(alone())
    encoded = rt.projector.encoded
    assert asyncio.run(together()) == first
    assert rt.projector.encoded == encoded  # every image came from the cache or a reused prefix
    assert rt.stats()["media_chunks"] >= 4


def test_text_only_model_refuses_images(smollm2_gguf: Path, tmp_path: Path) -> None:
    from tests.ffruntime.llamacpp.test_engine import open_runtime

    runtime = open_runtime(tmp_path, smollm2_gguf, num_ctx=256)
    try:
        with pytest.raises(MediaRejected, match="takes no images: it has no multimodal projector"):
            asyncio.run(run(runtime, ask(png(3))))
    finally:
        asyncio.run(runtime.close())


def test_a_follow_up_about_the_same_image_reuses_its_kv(rt: LlamaCppRuntime) -> None:
    """Prefix reuse covers media chunks: the second turn about a picture decodes only the new text, and
    the picture is neither encoded nor decoded again."""
    assert rt.projector is not None
    image = png(40)
    first, _ = asyncio.run(run(rt, ask(image, n=4)))
    before = rt.stats()
    follow = GenerationRequest(
        messages=[ChatMessage("user", QUESTION, media=(Media(image),)), ChatMessage("assistant", first),
                  ChatMessage("user", "And the colours?")],
        options={"temperature": 0, "num_predict": 4})
    _, done = asyncio.run(run(rt, follow))
    after = rt.stats()
    assert after["prefix_hits"] == before["prefix_hits"] + 1
    assert after["prefix_tokens"] - before["prefix_tokens"] > 9  # the image's 9 tokens and the text before
    assert after["media_chunks"] == before["media_chunks"]  # not decoded again
    assert after["media_encoded"] == before["media_encoded"]  # nor encoded again (the cache)
    assert done.prompt_tokens > 9
