"""The speech stage: a CTranslate2 Whisper folder → one CTranslate2 model per QUANTIZE type.

``FROM`` a CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``, a vocabulary,
as ``ct2-transformers-converter`` writes it); each variant's ``model.bin`` is the source's weights stored
at its type (``int8``, ``float16``, ``float32``) by :func:`ffbuild.stages.ct2_model.requantize`, and the
folder's other files travel beside it unchanged. Each (source, type) is one build-cache entry keyed by
the source folder's digest and the ctranslate2 version, so a rebuild with nothing changed stores nothing
new.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Final

import numpy as np

from ffbuild.cache import CacheValue, file_digest, folder_digest
from ffbuild.plan import Variant
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    Built,
    ExtraLayer,
    FetchedKind,
    TensorInfo,
    VariantOutput,
    WeightFile,
)
from ffbuild.stages.ct2_model import CT2ModelError, read_model, requantize
from ffbuild.stages.tools import package_version
from registry.oci import MODEL_WEIGHT_CONFIG

COMPANION_FILES: Final = (
    "config.json",
    "tokenizer.json",
    "vocabulary.txt",
    "vocabulary.json",
    "preprocessor_config.json",
)
"""The files of a CTranslate2 Whisper folder that travel beside ``model.bin`` (those present)."""
ARCHITECTURE: Final = "whisper"


def _param_count(model_bin: Path) -> int:
    """The weights of a model.bin (int8 scales not counted)."""
    model = read_model(model_bin)
    sizes = (np.prod(a.shape, dtype=np.int64) for n, a in model.variables.items() if not n.endswith("_scale"))
    return int(sum(sizes))


def _built(v: Variant, folder: Path, meta: dict[str, CacheValue], secs: float, hit: bool) -> Built:
    files, params = meta.get("files"), meta.get("params")
    damaged = BuildError(f"the speech cache entry {folder} is damaged; delete it and build again")
    if not isinstance(files, dict) or "model.bin" not in files or not isinstance(params, int):
        raise damaged
    out: dict[str, WeightFile] = {}
    for name, info in sorted(files.items()):
        if not isinstance(info, list) or len(info) != 2 or not (folder / name).is_file():
            raise damaged
        digest, size = info
        assert isinstance(digest, str) and isinstance(size, int)
        out[name] = WeightFile(folder / name, digest, size, build_owned=True)
    extra = tuple(ExtraLayer(MODEL_WEIGHT_CONFIG, n, w) for n, w in out.items() if n != "model.bin")
    return Built(
        v.quantization,
        out["model.bin"],
        TensorInfo(ARCHITECTURE, params, v.quantization),
        secs,
        hit,
        format="ctranslate2",
        weight_name="model.bin",
        extra=extra,
    )


def run(ctx: BuildContext) -> str:
    """The speech stage: each ``speech`` variant stored at its CTranslate2 type (cached)."""
    f = ctx.fetched
    if f is None or f.kind != FetchedKind.CT2_FOLDER or f.path is None:
        raise BuildError(
            "speech (TASK transcribe) variants are built FROM a CTranslate2 Whisper folder (model.bin, "
            "config.json, vocabulary); convert a Hugging Face Whisper folder first with CTranslate2's "
            f"ct2-transformers-converter, not {f.description if f else 'nothing'}"
        )
    source = f.path
    source_digest = folder_digest(source)
    version = package_version("ctranslate2")
    made = 0
    for v in ctx.plan.variants:
        key = ctx.cache_key("speech", source=source_digest, quantization=v.quantization, ctranslate2=version)
        ctx.progress.step("speech", f"{f.description} → {v.quantization} CTranslate2")

        def produce(folder: Path, v: Variant = v) -> dict[str, CacheValue]:
            try:
                requantize(source / "model.bin", folder / "model.bin", v.quantization)
            except CT2ModelError as exc:
                raise BuildError(f"variant {v.name}: {exc}") from None
            for name in COMPANION_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, folder / name)
            files: dict[str, CacheValue] = {
                p.name: [file_digest(p), p.stat().st_size] for p in sorted(folder.iterdir()) if p.is_file()
            }
            return {"files": files, "params": _param_count(source / "model.bin")}

        start = time.perf_counter()
        entry, hit = ctx.cache.run("speech", key, produce)
        made += not hit
        ctx.outputs.append(
            VariantOutput(v, _built(v, entry.path, entry.meta, time.perf_counter() - start, hit))
        )
    todo = len(ctx.plan.variants)
    return f"{todo} CTranslate2 variant(s); {made} stored, {todo - made} from the cache"
