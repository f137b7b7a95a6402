"""The errors build stages raise: one base, :class:`StageError`, with a subclass per stage.

Every message says what went wrong with which input and, where there is one, what to do about it; the
CLI prints it as it is. Nothing here carries a traceback-only meaning.
"""

from __future__ import annotations

from collections.abc import Iterable

from ffruntime.errors import BackendUnavailable


class StageError(Exception):
    """A build stage failed for a reason the user can act on."""


class MissingDependencyError(StageError):
    """A Python package a stage needs is not installed."""

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        super().__init__(str(BackendUnavailable.missing(package, extra, purpose)))
        self.package = package
        self.extra = extra


class GGUFError(StageError):
    """A file is not a readable GGUF, or lacks what the stage needs from it."""


class ConvertError(StageError):
    """A Hugging Face folder cannot be converted to GGUF."""


class UnsupportedArchitectureError(ConvertError):
    """The folder's ``config.json`` names an architecture llama.cpp's converter does not register."""

    def __init__(self, architecture: str, supported: Iterable[str], projector: bool = False) -> None:
        self.architecture = architecture
        self.supported = tuple(sorted(supported))
        what = "multimodal projector" if projector else "model"
        super().__init__(
            f"unsupported {what} architecture {architecture!r}: llama.cpp's converter (the version the "
            f"runtime loads) converts {len(self.supported)} {what} architectures: "
            + ", ".join(self.supported)
        )


class QuantizeError(StageError):
    """llama.cpp could not quantize a GGUF to the requested type."""


class RequantizeError(QuantizeError):
    """The source is already quantized and requantizing was not allowed."""


class LoraError(StageError):
    """A LoRA adapter (PEFT folder or GGUF) is malformed or does not fit its base model."""


class VerifyError(StageError):
    """A variant could not be evaluated (it does not load, or its outputs are unusable)."""
