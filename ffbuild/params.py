"""How PARAMETER values are read; the names and their types are :data:`ffruntime.options.OPTIONS`'.

Values are read as Ollama reads them (Go's ``strconv``): integers are base-10 with an optional sign;
floats are decimal or hexadecimal (``0x1p-2``) and must fit a float32; booleans are ``1 t T TRUE true
True`` / ``0 f F FALSE false False``. ``stop`` accumulates over several PARAMETER lines; for the others
the last one wins. Ranges are a request's (checked by the server), not a PARAMETER's, as in Ollama,
except an option with a fixed set of values (``mirostat``). Deliberate differences: ``NaN`` and ``Inf``
are refused (Ollama would pass them to the sampler), and ``mirostat``, ``mirostat_tau`` and
``mirostat_eta``, which Ollama has deprecated, are used (as they are in a request); the other names Ollama
has deprecated are accepted and dropped with a warning, as Ollama does.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Final

from ffbuild.errors import Problem, did_you_mean
from ffruntime.options import OPTIONS, ParamValue

__all__ = ["DEPRECATED_PARAMETERS", "PARAMETERS", "ParamValue", "convert", "parse_bool", "parse_float32",
           "parse_int"]

PARAMETERS: Final[dict[str, type[object]]] = {
    o.name: o.kind for o in OPTIONS.values() if o.parameter and not o.deprecated
}
"""What a Modelfile PARAMETER may set, and its type (from :data:`ffruntime.options.OPTIONS`)."""

DEPRECATED_PARAMETERS: Final = frozenset(name for name, o in OPTIONS.items() if o.deprecated)
"""Accepted and dropped with a warning, as in Ollama."""

# Ollama treats "PARAMETER <command> …" as that command (a quirk of how it names commands); ff refuses it.
COMMAND_NAMES: Final = {
    "model": "FROM",
    "adapter": "ADAPTER",
    "template": "TEMPLATE",
    "system": "SYSTEM",
    "license": "LICENSE",
    "message": "MESSAGE",
    "renderer": "RENDERER",
    "parser": "PARSER",
    "requires": "REQUIRES",
    "draft": "DRAFT",
}

_INT = re.compile(r"[+-]?[0-9]+")
_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HEX_FLOAT = re.compile(r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+")
_SPECIAL_FLOAT = re.compile(r"[+-]?(?:inf|infinity)|nan", re.IGNORECASE)
_TRUE: Final = ("1", "t", "T", "TRUE", "true", "True")
_FALSE: Final = ("0", "f", "F", "FALSE", "false", "False")


def parse_int(text: str) -> int:
    """Go's ``strconv.ParseInt(text, 10, 64)``."""
    if not _INT.fullmatch(text):
        raise Problem(f"{text!r} is not an integer")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise Problem(f"{text} is out of range for a 64-bit integer")
    return value


def parse_float32(text: str) -> float:
    """Go's ``strconv.ParseFloat(text, 32)``, finite values only."""
    if _SPECIAL_FLOAT.fullmatch(text):
        raise Problem(f"{text!r} is not a finite number")
    if _DEC_FLOAT.fullmatch(text):
        value = float(text)
    elif _HEX_FLOAT.fullmatch(text):
        value = float.fromhex(text)
    else:
        raise Problem(f"{text!r} is not a number")
    try:
        struct.pack("<f", value)
    except OverflowError:
        raise Problem(f"{text} is out of range for a 32-bit float") from None
    if math.isinf(value):
        raise Problem(f"{text} is out of range for a 32-bit float")
    return value


def parse_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise Problem(f"{text!r} is not a boolean", hint="use true or false")


def convert(name: str, value: str) -> ParamValue:
    """``value`` typed for parameter ``name``; a :class:`Problem` says why it cannot be.

    ``stop`` gives a one-element list, to be appended to earlier ones.
    """
    kind = PARAMETERS.get(name)
    if kind is None:
        if name in COMMAND_NAMES:
            raise Problem(
                f'"{name}" is not a parameter',
                hint=f"write {COMMAND_NAMES[name]} {value}" if value else f"use {COMMAND_NAMES[name]}",
                arg=0,
            )
        raise Problem(
            f'unknown parameter "{name}"',
            hint=did_you_mean(name, PARAMETERS) or "known parameters: " + ", ".join(PARAMETERS),
            arg=0,
        )
    option = OPTIONS[name]
    try:
        typed = _typed(kind, value)
        if option.choices and typed not in option.choices:
            raise Problem(f"{value} is not one of {option.describe()}")
    except Problem as exc:
        raise Problem(
            f"parameter {name}: {exc.message}", hint=exc.hint or f"{name} takes {option.describe()}", arg=1
        ) from None
    return typed


def _typed(kind: type[object], value: str) -> ParamValue:
    if kind is int:
        return parse_int(value)
    if kind is float:
        return parse_float32(value)
    if kind is bool:
        return parse_bool(value)
    return [value]
