"""CTranslate2 ``model.bin`` files: read one, store its weights at another CTranslate2 type, write it.

The binary layout (version 6, what ``ctranslate2.specs.ModelSpec`` writes): ``uint32`` version, the spec
name, ``uint32`` revision, ``uint32`` variable count, then per variable its name, ``uint8`` rank, the
``uint32`` dimensions, a ``uint8`` type id, ``uint32`` byte count and the bytes; then ``uint32`` alias
count and (alias, variable) name pairs. Strings are a ``uint16`` length (with the NUL) and the NUL-ended
UTF-8 text. All little-endian.

:func:`requantize` fills CTranslate2's own ``WhisperSpec`` with the stored weights and lets its
``optimize`` quantize them (the code its converters run, so ``int8`` / ``float16`` / ``float32`` are
stored exactly as ``ct2-transformers-converter --quantization`` stores them); an ``int8`` source is
dequantized with its per-row scales first.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from ffbuild.stages.errors import StageError

BINARY_VERSION: Final = 6
DTYPES: Final[tuple[str, ...]] = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
"""Type ids in CTranslate2's order (``include/ctranslate2/types.h``)."""
WHISPER_SPEC: Final = "WhisperSpec"
_MAX_NAME: Final = 4096


class CT2ModelError(StageError):
    """A ``model.bin`` that cannot be read, or one this module cannot store at another type."""


@dataclass
class CT2Model:
    """The contents of a ``model.bin``: variables by name (bfloat16 kept as raw uint16), and aliases."""

    spec: str
    revision: int
    variables: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def storage_type(self) -> str:
        """The type of the largest weights: what the model was stored as (``int8``, ``float16``, …)."""
        big = max(self.variables, key=lambda n: self.variables[n].size)
        return self.dtypes[big]


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CT2ModelError("model.bin ends early (truncated file)")
    return data


def _u(f: BinaryIO, fmt: str) -> int:
    value: int = struct.unpack("<" + fmt, _read(f, struct.calcsize(fmt)))[0]
    return value


def _string(f: BinaryIO) -> str:
    n = _u(f, "H")
    if not 0 < n <= _MAX_NAME:
        raise CT2ModelError(f"model.bin holds a name of length {n}")
    return _read(f, n)[:-1].decode("utf-8")


def read_model(path: Path) -> CT2Model:
    """Read ``path`` (a ``model.bin``); raise :class:`CT2ModelError` if it is not one this can read."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        version = _u(f, "I")
        if version != BINARY_VERSION:
            raise CT2ModelError(f"{path}: model.bin version {version}; ff reads version {BINARY_VERSION}")
        model = CT2Model(spec=_string(f), revision=_u(f, "I"))
        for _ in range(_u(f, "I")):
            name = _string(f)
            dims = [_u(f, "I") for _ in range(_u(f, "B"))]
            type_id, nbytes = _u(f, "B"), _u(f, "I")
            if type_id >= len(DTYPES) or nbytes > size:
                raise CT2ModelError(f"{path}: variable {name} has type {type_id} and {nbytes} bytes")
            dtype = DTYPES[type_id]
            np_dtype = np.uint16 if dtype == "bfloat16" else np.dtype(dtype)
            array = np.frombuffer(_read(f, nbytes), dtype=np_dtype)
            if array.size != int(np.prod(dims, dtype=np.int64)):
                raise CT2ModelError(f"{path}: variable {name} holds {array.size} values, not {dims}")
            model.variables[name] = array.reshape(dims)
            model.dtypes[name] = dtype
        for _ in range(_u(f, "I")):
            alias = _string(f)
            model.aliases[alias] = _string(f)
    return model


def _write_string(f: BinaryIO, text: str) -> None:
    data = text.encode("utf-8")
    f.write(struct.pack("<H", len(data) + 1) + data + b"\0")


def write_model(
    path: Path,
    spec: str,
    revision: int,
    variables: list[tuple[str, npt.NDArray[np.generic], str]],
    aliases: list[tuple[str, str]],
) -> None:
    """Write a ``model.bin``: ``variables`` as (name, array, CTranslate2 type) in the order given."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", BINARY_VERSION))
        _write_string(f, spec)
        f.write(struct.pack("<II", revision, len(variables)))
        for name, array, dtype in variables:
            _write_string(f, name)
            f.write(struct.pack("<B", array.ndim) + struct.pack(f"<{array.ndim}I", *array.shape))
            data = np.ascontiguousarray(array).tobytes()
            f.write(struct.pack("<BI", DTYPES.index(dtype), len(data)))
            f.write(data)
        f.write(struct.pack("<I", len(aliases)))
        for alias, name in aliases:
            _write_string(f, alias)
            _write_string(f, name)


def _layers(model: CT2Model, prefix: str) -> int:
    parts = (n.split("/") for n in model.variables if n.startswith(prefix + "/layer_"))
    return len({p[1] for p in parts if p[1][len("layer_") :].isdigit()})


def _heads(model: CT2Model, prefix: str) -> int:
    value = model.variables.get(f"{prefix}/num_heads")
    if value is None:
        raise CT2ModelError(f"model.bin has no {prefix}/num_heads")
    return int(value.reshape(-1)[0])


def _float_weights(model: CT2Model) -> dict[str, npt.NDArray[np.generic]]:
    """The variables with int8 weights turned back into float32 (weight / its per-row scale), their
    scales dropped; bfloat16 widened to float32."""
    out: dict[str, npt.NDArray[np.generic]] = {}
    for name, array in model.variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in model.variables:
            continue
        dtype = model.dtypes[name]
        if dtype == "int8" and f"{name}_scale" in model.variables:
            scale = model.variables[f"{name}_scale"].astype(np.float32).reshape(-1)
            flat = array.astype(np.float32).reshape(array.shape[0], -1) / scale[:, None]
            out[name] = flat.reshape(array.shape)
        elif dtype == "bfloat16":
            out[name] = (array.astype(np.uint32) << 16).view(np.float32)
        else:
            out[name] = array
    return out


def _vocabulary(folder: Path) -> list[str]:
    """The tokens of the vocabulary file beside ``model.bin`` (``vocabulary.json`` or ``.txt``)."""
    if (folder / "vocabulary.json").is_file():
        tokens = json.loads((folder / "vocabulary.json").read_text(encoding="utf-8"))
        if isinstance(tokens, list):
            return [str(t) for t in tokens]
    if (folder / "vocabulary.txt").is_file():
        return (folder / "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
    raise CT2ModelError(f"{folder}: no vocabulary.json or vocabulary.txt beside model.bin")


def requantize(source: Path, out: Path, quantization: str) -> str:
    """Store the Whisper ``source`` model.bin at ``quantization`` into ``out``; return the source's
    storage type. Raises :class:`CT2ModelError` (not a Whisper model, ctranslate2 missing)."""
    try:
        from ctranslate2.specs import model_spec, whisper_spec
    except ImportError:
        raise CT2ModelError(
            "storing CTranslate2 types needs ctranslate2: pip install 'ferrousforge[speech]'"
        ) from None
    model = read_model(source)
    if model.spec != WHISPER_SPEC:
        raise CT2ModelError(f"{source}: a {model.spec} model; ff builds CTranslate2 Whisper models")
    stored = model.storage_type()
    spec = whisper_spec.WhisperSpec(
        _layers(model, "encoder"),
        _heads(model, "encoder"),
        _layers(model, "decoder"),
        _heads(model, "decoder"),
    )
    weights = _float_weights(model)
    for alias, target in model.aliases.items():  # optimize() finds the duplicates and aliases them again
        if target not in weights:
            raise CT2ModelError(f"{source}: alias {alias} names a missing variable {target}")
        weights[alias] = weights[target]
    for name, array in weights.items():
        scope, _, attr = name.rpartition("/")
        try:
            holder = model_spec.index_spec(spec, scope)
        except (AttributeError, IndexError, ValueError):
            raise CT2ModelError(f"{source}: variable {name} is not part of a Whisper model") from None
        setattr(holder, attr, np.array(array))
    spec.register_vocabulary(_vocabulary(source.parent))
    try:
        spec.validate()  # wraps the arrays as CTranslate2 variables; names what a Whisper model lacks
    except ValueError as exc:
        raise CT2ModelError(f"{source}: not a complete Whisper model: {exc}") from None
    # int8 as the converters write it from float32 weights: int8 matrices, the rest float32
    spec.optimize(quantization="int8_float32" if quantization == "int8" else quantization)
    variables: list[tuple[str, npt.NDArray[np.generic], str]] = []
    aliases: list[tuple[str, str]] = []
    for name, value in spec.variables(ordered=True):
        if isinstance(value, str):
            aliases.append((name, value))
        else:
            variables.append((name, np.asarray(value.numpy()), str(value.dtype)))
    write_model(out, model.spec, model.revision, variables, aliases)
    return stored
