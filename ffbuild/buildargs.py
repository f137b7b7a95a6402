"""ARG and ``${name}`` substitution.

``ARG name[=default]`` declares a build argument; ``ff build --build-arg name=value`` overrides the
default. A default may use ARGs declared above it. ``${name}`` is replaced in FROM, ADAPTER, DRAFT,
PARAMETER values, REQUIRES, RENDERER, PARSER and the extension instructions (QUANTIZE, TARGET, TASK,
LABEL, VERIFY); TEMPLATE, SYSTEM, MESSAGE and LICENSE are left as written, since Go templates and
prompts may hold ``${…}`` text of their own. Only ``${identifier}`` is a reference; any other ``$`` is
kept. Using an ARG that is not declared, or has no value, is an error; so is a ``--build-arg`` that
no ARG declares.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from ffbuild.errors import ModelfileError, ModelfilePlanError, SourceText, did_you_mean
from ffbuild.modelfile import Instruction, Modelfile, parse

SUBSTITUTED: Final = frozenset(
    {"FROM", "ADAPTER", "DRAFT", "PARAMETER", "REQUIRES", "RENDERER", "PARSER", "QUANTIZE", "TARGET", "TASK",
     "LABEL", "VERIFY"}
)  # fmt: skip
REFERENCE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def resolve_args(
    modelfile: Modelfile, build_args: Mapping[str, str], source: SourceText, errors: list[ModelfileError]
) -> dict[str, str | None]:
    """Each declared ARG's value (the build arg, else its default, else None); problems go to ``errors``."""
    values: dict[str, str | None] = {}
    for ins in modelfile.instructions:
        if ins.keyword != "ARG":
            continue
        name = ins.args[0]
        if not _NAME.fullmatch(name):
            errors.append(
                _at(source, ins, 0, f'invalid ARG name "{name}" (letters, digits and _, not first a digit)')
            )
            continue
        if name in values:
            errors.append(_at(source, ins, 0, f"ARG {name} is declared twice"))
            continue
        default: str | None = None
        if len(ins.args) > 1:
            default = _substitute_text(ins.args[1], values, source, ins, errors)
        values[name] = build_args.get(name, default)
    for name in build_args:
        if name not in values:
            errors.append(
                ModelfilePlanError(
                    f"--build-arg {name}: the Modelfile declares no ARG {name}",
                    filename=source.filename,
                    hint=did_you_mean(name, values)
                    or (f"declare it: ARG {name}" if _NAME.fullmatch(name) else None),
                )
            )
    return values


def substitute(
    ins: Instruction, values: Mapping[str, str | None], source: SourceText, errors: list[ModelfileError]
) -> Instruction:
    """``ins`` with ``${name}`` replaced in the arguments that take substitution."""
    if ins.keyword not in SUBSTITUTED or not any("${" in a for a in ins.args):
        return ins
    first = 1 if ins.keyword == "PARAMETER" else 0  # never in a parameter's name
    args = list(ins.args)
    for i in range(first, len(args)):
        args[i] = _substitute_text(args[i], values, source, ins, errors)
    return replace(ins, args=tuple(args))


def substituted_text(modelfile: Modelfile, values: Mapping[str, str | None]) -> str:
    """The Modelfile's text with ``${name}`` replaced inside the instructions that take substitution
    (and in ARG defaults)."""
    text = modelfile.text
    pieces: list[str] = []
    last = 0
    for ins in modelfile.instructions:
        if ins.keyword not in SUBSTITUTED and ins.keyword != "ARG":
            continue
        start, end = ins.span
        pieces.append(text[last:start])
        pieces.append(_chunk(text[start:end], ins.keyword, values))
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def unfaithful(
    modelfile: Modelfile, values: Mapping[str, str | None], substituted: list[Instruction]
) -> Instruction | None:
    """The first instruction whose substituted text no longer reads as what it was planned as
    (``substituted``): a build arg holding a line break or quotes could change its meaning, or add
    instructions, in the text the artifact stores. None when every one reads back the same."""
    for raw, planned in zip(modelfile.instructions, substituted, strict=True):
        if raw.keyword not in SUBSTITUTED and raw.keyword != "ARG":
            continue
        start, end = raw.span
        before = modelfile.text[start:end]
        after = _chunk(before, raw.keyword, values)
        if after == before:
            continue
        if raw.keyword == "ARG" and len(raw.args) > 1:
            default = REFERENCE.sub(lambda m: _value_or_raw(m, values), raw.args[1])
            planned = replace(raw, args=(raw.args[0], default))
        try:
            again = parse("FROM x\n" + after).instructions[1:]
        except ModelfileError:
            return raw
        if again != [planned]:
            return raw
    return None


def _chunk(chunk: str, keyword: str, values: Mapping[str, str | None]) -> str:
    if keyword == "ARG":  # only the default, after the name
        head, eq, tail = chunk.partition("=")
        return head + eq + REFERENCE.sub(lambda m: _value_or_raw(m, values), tail)
    return REFERENCE.sub(lambda m: _value_or_raw(m, values), chunk)


def _value_or_raw(m: re.Match[str], values: Mapping[str, str | None]) -> str:
    value = values.get(m.group(1))
    return value if value is not None else m.group(0)


def _substitute_text(
    text: str,
    values: Mapping[str, str | None],
    source: SourceText,
    ins: Instruction,
    errors: list[ModelfileError],
) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in values:
            errors.append(
                _reference_error(
                    source, ins, m.group(0),
                    f"${{{name}}}: no ARG {name} is declared" + (" above" if ins.keyword == "ARG" else ""),
                    did_you_mean(name, values) or f"declare it: ARG {name}=<default>",
                )
            )  # fmt: skip
            return m.group(0)
        value = values[name]
        if value is None:
            errors.append(
                _reference_error(
                    source, ins, m.group(0), f"${{{name}}}: ARG {name} has no value",
                    f"give it a default (ARG {name}=…) or pass --build-arg {name}=…",
                )
            )  # fmt: skip
            return m.group(0)
        return value

    return REFERENCE.sub(one, text)


def _reference_error(
    source: SourceText, ins: Instruction, ref: str, message: str, hint: str
) -> ModelfileError:
    start, end = ins.span
    found = source.text.find(ref, start, end)
    offset = found if found >= 0 else start
    return source.error(ModelfilePlanError, offset, message, hint=hint)


def _at(source: SourceText, ins: Instruction, arg: int, message: str) -> ModelfileError:
    line, column = ins.arg_positions[arg] if arg < len(ins.arg_positions) else (ins.line, ins.column)
    return source.error(ModelfilePlanError, source.offset(line, column) if line else 0, message)
