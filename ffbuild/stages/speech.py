"""The speech stage: a Whisper model → one CTranslate2 model per QUANTIZE type.

``FROM`` a CTranslate2 Whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``, a vocabulary,
as ``ct2-transformers-converter`` writes it): each variant's ``model.bin`` is the source's weights stored
at its type (``int8``, ``float16``, ``float32``) by :func:`ffbuild.stages.ct2_model.requantize`, and the
folder's other files travel beside it unchanged. ``FROM`` a Hugging Face Whisper folder (safetensors,
``model_type`` ``whisper``): each type is converted by CTranslate2's own converter
(``ctranslate2.converters.TransformersConverter`` with ``quantization``; it needs transformers and
torch, the ``export`` extra), the tokenizer and preprocessor config copied beside it.

Each (source, type) is one build-cache entry keyed by the source folder's digest and the versions of
ctranslate2, transformers and torch, so a rebuild with nothing changed stores nothing new.
"""

from __future__ import annotations

import importlib.util
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
CONVERTER_PACKAGES: Final = ("ctranslate2", "transformers", "torch")
"""What the stored weights depend on besides the source (part of the build-cache key)."""


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


def convert_hf(source: Path, out: Path, quantization: str) -> None:
    """CTranslate2's converter: the Hugging Face Whisper ``source`` into ``out`` at ``quantization``."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise BuildError("converting Whisper needs ctranslate2: pip install 'ferrousforge[speech]'") from None
    for module in ("transformers", "torch"):
        if importlib.util.find_spec(module) is None:
            raise BuildError(
                f"converting a Hugging Face Whisper folder needs {module}: "
                "pip install 'ferrousforge[export]' (or FROM a CTranslate2 folder)"
            )
    copy = [n for n in ("tokenizer.json", "preprocessor_config.json") if (source / n).is_file()]
    target = out / "converted"
    try:
        TransformersConverter(str(source), copy_files=copy).convert(str(target), quantization=quantization)
    except (ValueError, OSError, RuntimeError, KeyError) as exc:
        raise BuildError(f"CTranslate2's converter failed on {source}: {exc}") from None
    for p in target.iterdir():
        p.rename(out / p.name)
    target.rmdir()


def run(ctx: BuildContext) -> str:
    """The speech stage: each ``speech`` variant stored at its CTranslate2 type (cached)."""
    f = ctx.fetched
    if f is None or f.kind not in (FetchedKind.CT2_FOLDER, FetchedKind.HF_FOLDER) or f.path is None:
        raise BuildError(
            "speech (TASK transcribe) variants are built FROM a CTranslate2 Whisper folder (model.bin, "
            "config.json, vocabulary) or a Hugging Face Whisper folder, "
            f"not {f.description if f else 'nothing'}"
        )
    converting = f.kind == FetchedKind.HF_FOLDER
    source = f.path
    source_digest = folder_digest(source)
    version: dict[str, CacheValue] = {p: package_version(p) for p in CONVERTER_PACKAGES}
    made = 0
    for v in ctx.plan.variants:
        key = ctx.cache_key(
            "speech", source=source_digest, quantization=v.quantization, packages=version, hf=converting
        )
        ctx.progress.step("speech", f"{f.description} → {v.quantization} CTranslate2")

        def produce(folder: Path, v: Variant = v) -> dict[str, CacheValue]:
            if converting:
                convert_hf(source, folder, v.quantization)
            else:
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
            return {"files": files, "params": _param_count(folder / "model.bin")}

        start = time.perf_counter()
        entry, hit = ctx.cache.run("speech", key, produce)
        made += not hit
        ctx.outputs.append(
            VariantOutput(v, _built(v, entry.path, entry.meta, time.perf_counter() - start, hit))
        )
    todo = len(ctx.plan.variants)
    return f"{todo} CTranslate2 variant(s); {made} stored, {todo - made} from the cache"
