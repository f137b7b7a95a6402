"""The GGUF header reader (:mod:`registry.gguf_info`) as the build stages use it: a file that is not a
readable GGUF raises this package's :class:`~ffbuild.stages.errors.GGUFError` (a ``StageError``)."""

from __future__ import annotations

from pathlib import Path

from ffbuild.stages.errors import GGUFError
from registry import gguf_info as _reader
from registry.gguf_info import GGUFHeader, GGUFInfo, TensorEntry, is_quantized, size_label

__all__ = [
    "GGUFHeader",
    "GGUFInfo",
    "TensorEntry",
    "is_quantized",
    "read_gguf_header",
    "read_gguf_info",
    "size_label",
]


def read_gguf_header(path: Path) -> GGUFHeader:
    try:
        return _reader.read_gguf_header(path)
    except _reader.GGUFFormatError as exc:
        raise GGUFError(str(exc)) from None


def read_gguf_info(path: Path) -> GGUFInfo:
    try:
        return _reader.read_gguf_info(path)
    except _reader.GGUFFormatError as exc:
        raise GGUFError(str(exc)) from None
