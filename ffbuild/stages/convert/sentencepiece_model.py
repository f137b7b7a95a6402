"""Read a SentencePiece ``tokenizer.model`` (a protobuf ``ModelProto``) without the sentencepiece package.

Only what a GGUF vocabulary needs: each piece's text, score and type (field 1: ``SentencePiece
{piece = 1, score = 2, type = 3}``) and the normalizer's ``add_dummy_prefix`` (field 3, its field 3).
Piece types use the same numbers as ``gguf.TokenType`` (1 normal, 2 unknown, 3 control,
4 user-defined, 5 unused, 6 byte).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ffbuild.stages.errors import ConvertError

_MAX_MODEL = 256 * 1024 * 1024


@dataclass(frozen=True)
class SentencePieceModel:
    pieces: list[tuple[str, float, int]]  # (text, score, gguf.TokenType value)
    add_dummy_prefix: bool


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def varint(self) -> int:
        out = shift = 0
        while True:
            if self.pos >= len(self.data) or shift > 63:
                raise ConvertError(f"{self.path}: not a SentencePiece model (bad varint)")
            b = self.data[self.pos]
            self.pos += 1
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def fields(self) -> list[tuple[int, int, int | bytes]]:
        """(field number, wire type, value) for every field of the message."""
        out: list[tuple[int, int, int | bytes]] = []
        while self.pos < len(self.data):
            key = self.varint()
            num, wire = key >> 3, key & 7
            value: int | bytes
            if wire == 0:
                value = self.varint()
            elif wire == 1:
                value = self._take(8)
            elif wire == 2:
                value = self._take(self.varint())
            elif wire == 5:
                value = self._take(4)
            else:
                raise ConvertError(f"{self.path}: not a SentencePiece model (wire type {wire})")
            out.append((num, wire, value))
        return out

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ConvertError(f"{self.path}: not a SentencePiece model (truncated)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def read_sentencepiece_model(path: Path) -> SentencePieceModel:
    try:
        if path.stat().st_size > _MAX_MODEL:
            raise ConvertError(f"{path}: too large for a SentencePiece model")
        data = path.read_bytes()
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or e}") from e
    pieces: list[tuple[str, float, int]] = []
    add_dummy_prefix = True
    for num, wire, value in _Reader(data, path).fields():
        if num == 1 and wire == 2 and isinstance(value, bytes):
            text, score, kind = "", 0.0, 1
            for pnum, pwire, pval in _Reader(value, path).fields():
                if pnum == 1 and pwire == 2 and isinstance(pval, bytes):
                    try:
                        text = pval.decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ConvertError(f"{path}: piece {len(pieces)} is not UTF-8") from e
                elif pnum == 2 and pwire == 5 and isinstance(pval, bytes):
                    (score,) = struct.unpack("<f", pval)
                elif pnum == 3 and pwire == 0 and isinstance(pval, int):
                    kind = pval if 1 <= pval <= 6 else 1
            pieces.append((text, score, kind))
        elif num == 3 and wire == 2 and isinstance(value, bytes):
            for nnum, nwire, nval in _Reader(value, path).fields():
                if nnum == 3 and nwire == 0 and isinstance(nval, int):
                    add_dummy_prefix = bool(nval)
    if not pieces:
        raise ConvertError(f"{path}: not a SentencePiece model (no pieces)")
    return SentencePieceModel(pieces, add_dummy_prefix)
