"""Verify a projector layer (``mmproj.gguf``): its image embeddings against the source model's vision tower.

Run only when the build converted a Hugging Face folder (the source's vision tower is there to compare
with). A fixed set of images (:func:`fixed_images`: seeded noise and a gradient, at sizes both sides
tile without resizing differences) goes through llama.cpp's multimodal library exactly as the server
sends it (:class:`~ffruntime.llamacpp.media.Projector`: Pillow decode, libmtmd preprocessing and
encoder) and through transformers (the folder's image processor and ``get_image_features``); the report
holds each image's lowest per-token cosine. Below :data:`MIN_COSINE` the build fails: a projector that
does not see what the source model sees would answer about another picture.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ffbuild.cache import CacheValue
from ffruntime.runtime import Media
from ffruntime.settings import LoadSettings

MIN_COSINE = 0.99
NOT_AN_IMAGE_PROJECTOR = ("an audio projector: the build compares image embeddings only (audio is compared "
                          "with transformers in ff's tests, docs/serving.md)")
SIDE = 84  # a multiple of 28 (14-px patches merged 2×2) that no processor here resizes differently


class _AudioOnly(Exception):
    """The projector encodes audio, not images: there is nothing for this check to compare."""


def fixed_images() -> list[bytes]:
    """The verify images, as PNG files: two of seeded noise and a colour gradient."""
    from PIL import Image

    out = []
    for seed in (0, 1):
        pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        out.append(pixels)
    ramp = np.linspace(0, 255, SIDE, dtype=np.uint8)
    out.append(np.stack([np.tile(ramp, (SIDE, 1)), np.tile(ramp[:, None], (1, SIDE)),
                         np.full((SIDE, SIDE), 128, np.uint8)], axis=-1))
    files = []
    for arr in out:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        files.append(buf.getvalue())
    return files


def llamacpp_embeddings(
    model: Path, projector: Path, images: list[bytes], threads: int
) -> list[npt.NDArray[np.float32]]:
    """Each image's embeddings through libmtmd (one row per image token)."""
    from ffruntime.llamacpp.library import binding, free_handles, load_model, model_params
    from ffruntime.llamacpp.media import MARKER, Projector
    from ffruntime.settings import MediaLimits

    lc = binding()
    handle = load_model(model, model_params(LoadSettings(threads=threads)))
    try:
        proj = Projector(projector, handle, int(lc.llama_model_n_embd(handle)), threads=max(1, threads),
                         limits=MediaLimits(), wake=lambda: None)
        try:
            if not proj.vision:
                raise _AudioOnly(NOT_AN_IMAGE_PROJECTOR)
            out = []
            for data in images:
                prompt = proj.prompt(MARKER + ".", [Media(data)], add_special=False, model_name=model.name)
                try:
                    (part,) = prompt.parts
                    part.done.wait()
                    if part.error is not None:
                        raise part.error
                    assert part.embd is not None
                    out.append(part.embd.copy())
                finally:
                    prompt.close()
            return out
        finally:
            proj.close()
    finally:
        free_handles(None, (), handle)


def transformers_embeddings(folder: Path, images: list[bytes]) -> list[npt.NDArray[np.float32]]:
    """Each image's embeddings from the source model's vision tower and projector (transformers)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    proc = AutoImageProcessor.from_pretrained(folder, backend="pil")
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    model.train(False)  # inference mode
    out = []
    for data in images:
        inputs = proc(images=[Image.open(io.BytesIO(data)).convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            feats = model.get_image_features(**inputs)  # type: ignore[operator]
        rows = getattr(feats, "pooler_output", feats)
        first = rows[0] if isinstance(rows, list | tuple) else rows
        out.append(first.reshape(-1, first.shape[-1]).float().numpy())
    return out


def verify_projector(folder: Path, model: Path, projector: Path, threads: int) -> dict[str, CacheValue]:
    """{"images", "min_cosine", "cosines" (per image), "tokens" (per image)}; or {"error"} when the
    comparison cannot be made (an architecture transformers or the check does not cover)."""
    images = fixed_images()
    try:
        ours = llamacpp_embeddings(model, projector, images, threads)
        theirs = transformers_embeddings(folder, images)
    except _AudioOnly as exc:
        return {"error": str(exc)}
    except Exception as exc:  # the report says why; the policy decides
        return {"error": f"{type(exc).__name__}: {exc}"}
    cosines: list[CacheValue] = []
    tokens: list[CacheValue] = []
    for a, b in zip(ours, theirs, strict=True):
        if a.shape != b.shape:
            return {"error": f"llama.cpp gives {a.shape} image embeddings, transformers {b.shape}"}
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        cosines.append(float(cos.min()))
        tokens.append(int(a.shape[0]))
    low = min(float(c) for c in cosines if isinstance(c, float))
    return {"images": len(images), "min_cosine": low, "cosines": cosines, "tokens": tokens}
