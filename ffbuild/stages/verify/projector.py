"""Verify a projector layer (``mmproj.gguf``): its embeddings against the source model's vision or audio
tower.

Run only when the build converted a Hugging Face folder (the source's vision tower is there to compare
with). A fixed set of images (:func:`fixed_images`: seeded noise and a gradient, at sizes both sides
tile without resizing differences) goes through llama.cpp's multimodal library exactly as the server
sends it (:class:`~ffruntime.llamacpp.media.Projector`: Pillow decode, libmtmd preprocessing and
encoder) and through transformers (the folder's image processor and ``get_image_features``); the report
holds each image's lowest per-token cosine. Below :data:`MIN_COSINE` the build fails: a projector that
does not see what the source model sees would answer about another picture.

An audio projector (no vision encoder) is checked the same way with fixed clips (:func:`fixed_clips`:
a vowel-like tone and a chirp, 16 kHz WAV) decoded as the server decodes them (PyAV) and, for transformers,
turned into log-mel features by the folder's feature extractor padded to the 30 s window libmtmd encodes.
The reference tower is the one run here: Qwen2-Audio's (``audio_tower`` then ``multi_modal_projector``);
other audio architectures are reported as not checked.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ffbuild.cache import CacheValue
from ffruntime.runtime import Media, MediaKind
from ffruntime.settings import LoadSettings

MIN_COSINE = 0.99
AUDIO_TOWERS = ("Qwen2AudioForConditionalGeneration",)
"""Architectures whose audio tower the check runs in transformers (the ones proven against libmtmd)."""
SIDE = 84  # a multiple of 28 (14-px patches merged 2×2) that no processor here resizes differently


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


def fixed_clips() -> list[bytes]:
    """The verify clips of audio projectors, as 16 kHz mono WAV files: a 2 s vowel-like tone (150 Hz and
    its harmonics up to 3 kHz, decaying) and a 3 s chirp. Tonal on purpose: white noise reaches only
    cosine 0.965 here, libmtmd's log-mel features differing from transformers' on broadband input."""
    import wave

    rate = 16_000
    t2, t3 = np.arange(2 * rate) / rate, np.arange(3 * rate) / rate
    vowel = sum(np.sin(2 * np.pi * 150 * k * t2) / k for k in range(1, 21)) * 0.15
    clips = [vowel, 0.3 * np.sin(2 * np.pi * (200 + 300 * t3) * t3)]
    files = []
    for x in clips:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
        files.append(buf.getvalue())
    return files


def llamacpp_embeddings(
    model: Path, projector: Path, images: list[bytes], threads: int, clips: list[bytes] | None = None
) -> tuple[str, list[npt.NDArray[np.float32]]]:
    """("image", each image's embeddings) through libmtmd (one row per token); for a projector without
    a vision encoder ("audio", each of ``clips``' embeddings)."""
    from ffruntime.llamacpp.library import binding, free_handles, load_model, model_params
    from ffruntime.llamacpp.media import MARKER, Projector
    from ffruntime.settings import MediaLimits

    lc = binding()
    handle = load_model(model, model_params(LoadSettings(threads=threads)))
    try:
        proj = Projector(projector, handle, int(lc.llama_model_n_embd(handle)), threads=max(1, threads),
                         limits=MediaLimits(), wake=lambda: None)
        try:
            kind: MediaKind = "image" if proj.vision or not proj.audio else "audio"
            items = [Media(d, kind) for d in (images if kind == "image" else clips or [])]
            out = []
            for item in items:
                prompt = proj.prompt(MARKER + ".", [item], add_special=False, model_name=model.name)
                try:
                    (part,) = prompt.parts
                    part.done.wait()
                    if part.error is not None:
                        raise part.error
                    assert part.embd is not None
                    out.append(part.embd.copy())
                finally:
                    prompt.close()
            return kind, out
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


def transformers_audio_embeddings(folder: Path, clips: list[bytes]) -> list[npt.NDArray[np.float32]]:
    """Each clip's embeddings from the source model's audio tower and projector (transformers), on the
    samples the server decodes and the whole 30 s window libmtmd encodes (unmasked, as libmtmd does)."""
    import json

    import torch
    import transformers

    from ffruntime.audio import SAMPLE_RATE, decode

    arch = json.loads((folder / "config.json").read_text()).get("architectures", ["?"])[0]
    if arch not in AUDIO_TOWERS:
        known = ", ".join(AUDIO_TOWERS)
        raise LookupError(f"{arch}'s audio tower is not among those this check runs: {known}")
    fe = transformers.AutoFeatureExtractor.from_pretrained(folder)
    model = getattr(transformers, arch).from_pretrained(folder, dtype=torch.float32).model
    model.train(False)  # inference mode
    out = []
    for data in clips:
        samples = decode(data).samples
        feats = fe(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding="max_length")
        with torch.no_grad():
            hidden = model.audio_tower(feats["input_features"]).last_hidden_state
            out.append(model.multi_modal_projector(hidden)[0].float().numpy())
    return out


def verify_projector(folder: Path, model: Path, projector: Path, threads: int) -> dict[str, CacheValue]:
    """{"images" or "clips", "min_cosine", "cosines" (per item), "tokens" (per item)}; or {"error"} when
    the comparison cannot be made (an architecture transformers or the check does not cover)."""
    images, clips = fixed_images(), fixed_clips()
    try:
        kind, ours = llamacpp_embeddings(model, projector, images, threads, clips)
        if kind == "image":
            theirs = transformers_embeddings(folder, images)
        else:
            theirs = transformers_audio_embeddings(folder, clips)
    except Exception as exc:  # the report says why; the policy decides
        return {"error": f"{type(exc).__name__}: {exc}"}
    cosines: list[CacheValue] = []
    tokens: list[CacheValue] = []
    for a, b in zip(ours, theirs, strict=True):
        if a.shape != b.shape:
            return {"error": f"llama.cpp gives {a.shape} {kind} embeddings, transformers {b.shape}"}
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        cosines.append(float(cos.min()))
        tokens.append(int(a.shape[0]))
    low = min(float(c) for c in cosines if isinstance(c, float))
    return {"images" if kind == "image" else "clips": len(ours), "min_cosine": low, "cosines": cosines,
            "tokens": tokens}
