"""Hugging Face folder → GGUF, by llama.cpp's own converter (no conversion code of ff's own).

:func:`convert_hf_to_gguf` runs ``convert_hf_to_gguf.py`` from the llama-cpp-python source that
``.ci/setup`` keeps (:mod:`ffbuild.stages.convert.source`: the same llama.cpp the runtime loads) in a
subprocess (:mod:`ffbuild.stages.convert.runner`); :func:`convert_projector` runs it with ``--mmproj``
for the vision/audio projector of a multimodal folder. Which architectures convert is whatever that
converter registers (``conversion/``; ``python convert_hf_to_gguf.py --print-supported-models``).
The stage that runs them through the build cache is :mod:`ffbuild.stages.convert.stage`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Final

from ffbuild.stages.convert.runner import Report, run_script, supported_architectures
from ffbuild.stages.convert.source import CONVERT_SCRIPT, LlamaCppSource, llama_cpp_source
from ffbuild.stages.errors import ConvertError
from ffbuild.stages.gguf_info import GGUFInfo, read_gguf_info
from registry.atomic import atomic_output

__all__ = [
    "OUTTYPES",
    "convert_hf_to_gguf",
    "convert_projector",
    "default_model_name",
    "is_multimodal",
    "supported_architectures",
]

OUTTYPES: Final = ("f32", "f16", "bf16")
"""What the convert stage asks the converter for (other types come from the quantize stage)."""
TOKENIZER_FILES: Final = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tekken.json")
"""One of these must sit beside the weights: the vocabulary the GGUF carries."""
MULTIMODAL_KEYS: Final = ("vision_config", "audio_config", "whisper_config")
"""config.json keys of a model with a vision or audio tower (its projector converts with --mmproj)."""


def default_model_name(folder: Path) -> str:
    """``general.name``: the folder's name, or the repo's name for a Hugging Face cache snapshot."""
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--")[-1]
    return folder.name


def read_config(folder: Path) -> dict[str, object]:
    """``config.json`` of a model folder, or :class:`ConvertError` saying what is wrong with it."""
    if not folder.is_dir():
        raise ConvertError(f"{folder} is not a folder")
    path = folder / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{folder} has no config.json: not a Hugging Face model folder") from None
    except (OSError, ValueError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


def architecture(config: dict[str, object]) -> str:
    archs = config.get("architectures")
    return str(archs[0]) if isinstance(archs, list) and archs else str(config.get("model_type", "?"))


def is_multimodal(folder: Path) -> bool:
    """Whether the folder's model has a vision or audio tower (so a projector to convert)."""
    config = read_config(folder)
    return any(isinstance(config.get(k), dict) for k in MULTIMODAL_KEYS)


def _check_folder(folder: Path) -> dict[str, object]:
    config = read_config(folder)
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise ConvertError(
            f"{folder} ({architecture(config)}) has no tokenizer: the GGUF needs one of "
            f"{', '.join(TOKENIZER_FILES)} beside config.json (copy them from the model's repository)"
        )
    if not any(folder.glob("*.safetensors")):
        raise ConvertError(f"{folder} ({architecture(config)}) has no weights (*.safetensors)")
    return config


def _convert(
    folder: Path,
    out: Path,
    outtype: str,
    name: str | None,
    report: Report | None,
    *,
    mmproj: bool,
    source: LlamaCppSource | None,
) -> GGUFInfo:
    if outtype not in OUTTYPES:
        raise ConvertError(f"cannot convert to {outtype!r}: choose one of {', '.join(OUTTYPES)}")
    config = _check_folder(folder)
    src = source or llama_cpp_source()
    what = f"{folder.name} ({architecture(config)}{', projector' if mmproj else ''})"
    name = name if name is not None else default_model_name(folder)
    # The converter guesses metadata (general.finetune, basename) from the folder's own name: it sees the
    # folder through a link called after the model, so a hub snapshot converts like the same folder.
    with tempfile.TemporaryDirectory(prefix="ff-convert-") as tmpdir, atomic_output(out) as tmp:
        seen = Path(tmpdir) / (name.replace("/", "_").strip(".") or "model")
        seen.symlink_to(folder.resolve(), target_is_directory=True)
        args = [str(seen), "--outfile", str(tmp), "--outtype", outtype, "--model-name", name]
        args += ["--mmproj"] if mmproj else []
        run_script(src, CONVERT_SCRIPT, args, what=what, report=report)
        if not tmp.is_file():
            raise ConvertError(f"llama.cpp's converter wrote no GGUF for {what}")
    return read_gguf_info(out)


def convert_hf_to_gguf(
    folder: Path,
    out: Path,
    outtype: str = "f16",
    *,
    name: str | None = None,
    report: Report | None = None,
    source: LlamaCppSource | None = None,
) -> GGUFInfo:
    """Convert the Hugging Face model in ``folder`` to the GGUF ``out`` (``f32``, ``f16`` or ``bf16``)
    with llama.cpp's converter; describe it. ``name`` sets ``general.name`` (default:
    :func:`default_model_name`); ``report`` receives progress messages. Raises :class:`ConvertError`
    (:class:`~ffbuild.stages.errors.UnsupportedArchitectureError` for an architecture it lacks)."""
    return _convert(folder, out, outtype, name, report, mmproj=False, source=source)


def convert_projector(
    folder: Path,
    out: Path,
    outtype: str = "f16",
    *,
    name: str | None = None,
    report: Report | None = None,
    source: LlamaCppSource | None = None,
) -> GGUFInfo:
    """The vision/audio projector of a multimodal folder as a GGUF (``convert_hf_to_gguf.py --mmproj``)."""
    return _convert(folder, out, outtype, name, report, mmproj=True, source=source)
