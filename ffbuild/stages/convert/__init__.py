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
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ffbuild.cache import DigestMeanwhile
from ffbuild.stages.convert.runner import Report, Running, supported_architectures
from ffbuild.stages.convert.source import CONVERT_SCRIPT, LlamaCppSource, llama_cpp_source
from ffbuild.stages.errors import ConvertError
from registry.atomic import replace_durably

if TYPE_CHECKING:
    from ffbuild.stages.gguf_info import GGUFInfo

__all__ = [
    "OUTTYPES",
    "Conversion",
    "convert_hf_to_gguf",
    "convert_projector",
    "default_model_name",
    "is_multimodal",
    "start_conversion",
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


class Conversion:
    """A conversion started in the background (:func:`start_conversion`): the converter writes into a
    scratch folder of this one's own until :meth:`finish` moves its GGUF to where it belongs, or
    :meth:`cancel` stops it (the caller found the result elsewhere, e.g. in the build cache)."""

    def __init__(
        self,
        folder: Path,
        outtype: str,
        name: str | None,
        report: Report | None,
        *,
        mmproj: bool,
        source: LlamaCppSource | None,
        scratch: Path,
    ) -> None:
        if outtype not in OUTTYPES:
            raise ConvertError(f"cannot convert to {outtype!r}: choose one of {', '.join(OUTTYPES)}")
        config = _check_folder(folder)
        src = source or llama_cpp_source()
        self.what = f"{folder.name} ({architecture(config)}{', projector' if mmproj else ''})"
        name = name if name is not None else default_model_name(folder)
        # The converter guesses metadata (general.finetune, basename) from the folder's own name: it sees
        # the folder through a link called after the model, so a hub snapshot converts like the same folder.
        self._tmpdir = scratch
        seen = self._tmpdir / "in" / (name.replace("/", "_").strip(".") or "model")
        seen.parent.mkdir()
        seen.symlink_to(folder.resolve(), target_is_directory=True)
        self._written = self._tmpdir / "model.gguf"
        args = [str(seen), "--outfile", str(self._written), "--outtype", outtype, "--model-name", name]
        args += ["--mmproj"] if mmproj else []
        self._running = Running(src, CONVERT_SCRIPT, args, what=self.what, report=report, remove=[scratch])

    def report_to(self, report: Report | None) -> None:
        """Where the converter's progress goes from now on (:meth:`Running.report_to`)."""
        self._running.report_to(report)

    def finish(self, out: Path) -> GGUFInfo:
        """Wait for the converter and move its GGUF to ``out`` durably; describe it."""
        try:
            self._running.finish()
            if not self._written.is_file():
                raise ConvertError(f"llama.cpp's converter wrote no GGUF for {self.what}")
            out.parent.mkdir(parents=True, exist_ok=True)
            with DigestMeanwhile() as hashing:
                hashing.start(self._written)
                replace_durably(self._written, out)
        finally:
            self.cancel()
        from ffbuild.stages.gguf_info import read_gguf_info  # numpy and gguf: not needed to start

        return read_gguf_info(out)

    def cancel(self) -> None:
        """Stop the converter if it still runs and remove its scratch folder."""
        self._running.cancel()
        shutil.rmtree(self._tmpdir, ignore_errors=True)


def start_conversion(
    folder: Path,
    outtype: str = "f16",
    *,
    name: str | None = None,
    report: Report | None = None,
    mmproj: bool = False,
    source: LlamaCppSource | None = None,
    scratch: Path,
) -> Conversion:
    """Start converting ``folder`` (as :func:`convert_hf_to_gguf`, or :func:`convert_projector` with
    ``mmproj``) in the background. ``scratch``: a new empty folder for its output, removed when the
    conversion ends, on the file system of the final destination (:meth:`Conversion.finish` renames the
    GGUF there). The folder's checks run first and raise :class:`ConvertError` at once."""
    try:
        return Conversion(folder, outtype, name, report, mmproj=mmproj, source=source, scratch=scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


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
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".ff-convert-", dir=out.parent))
    conversion = start_conversion(
        folder, outtype, name=name, report=report, mmproj=mmproj, source=source, scratch=scratch
    )
    return conversion.finish(out)


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
