"""Modelfile syntax: ``parse(text) -> Modelfile`` and back with ``format(modelfile) -> str``.

Syntax only: nothing here touches the filesystem (except :func:`parse_file`, which reads the one file)
or gives instructions a meaning; that is ``ffbuild.plan``'s job. The grammar is
``grammar/modelfile.lark`` (see the rules there); a file Ollama accepts gives the same instructions, in
the same order, as Ollama's own parser.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Final

from lark import Lark, Token, Tree
from lark.exceptions import LarkError, UnexpectedInput

from ffbuild.errors import ModelfileError, ModelfileSyntaxError, SourceText, did_you_mean, printable
from ffbuild.modelfile_text import WordsError, decode_value, quote_value, quote_word, split_words

OLLAMA_KEYWORDS: Final = (
    "FROM", "PARAMETER", "TEMPLATE", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE", "REQUIRES", "DRAFT",
    "RENDERER", "PARSER",
)  # fmt: skip
EXTENSION_KEYWORDS: Final = ("QUANTIZE", "TARGET", "TASK", "LABEL", "ARG", "VERIFY")
KEYWORDS: Final = OLLAMA_KEYWORDS + EXTENSION_KEYWORDS
MESSAGE_ROLES: Final = ("system", "user", "assistant")
MAX_FILE_BYTES: Final = 16 * 1024 * 1024

_ONE_WORD = ("TASK", "ARG")


@dataclass(frozen=True)
class Instruction:
    """One instruction as written: ``keyword`` in upper case and its ``args``.

    ``args`` by keyword: FROM → (source,); PARAMETER → (name, value); MESSAGE → (role, content);
    TEMPLATE, SYSTEM, LICENSE, ADAPTER, REQUIRES, DRAFT, RENDERER, PARSER → (text,); ARG → (name,) or
    (name, default); QUANTIZE, TARGET, TASK, LABEL, VERIFY → their words, quotes removed.
    ``${name}`` is kept as written. Equality compares ``keyword`` and ``args`` only; positions are
    1-based, ``arg_positions`` gives (line, column) of each argument and ``span`` the [start, end)
    offsets of the instruction in :attr:`Modelfile.text`.
    """

    keyword: str
    args: tuple[str, ...]
    line: int = field(default=0, compare=False)
    column: int = field(default=0, compare=False)
    arg_positions: tuple[tuple[int, int], ...] = field(default=(), compare=False, repr=False)
    span: tuple[int, int] = field(default=(0, 0), compare=False, repr=False)


@dataclass
class Modelfile:
    """The instructions of a Modelfile, in order, and the text they came from."""

    instructions: list[Instruction]
    filename: str | None = field(default=None, compare=False)
    text: str = field(default="", compare=False, repr=False)


def parse(text: str, filename: str | None = None) -> Modelfile:
    """Parse Modelfile text; raise :class:`ModelfileSyntaxError` with a position on any error.

    A leading UTF-8 byte order mark is ignored. As in Ollama, a file without FROM is an error.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    source = SourceText(text, filename)
    normal = _normalize(text)
    try:
        tree = _parser().parse(normal)
    except UnexpectedInput as exc:
        raise _syntax_error(source, normal, exc) from None
    except LarkError as exc:  # anything else the grammar machinery could raise
        raise ModelfileSyntaxError(f"cannot parse: {exc}", filename=filename) from None
    instructions = [_instruction(source, normal, node) for node in tree.children if isinstance(node, Tree)]
    # Ollama's rule, exactly: some command must be named "model", which FROM is, and so is the
    # (odd but accepted) "PARAMETER model …"; the planner then rejects the latter.
    if not any(
        i.keyword == "FROM" or (i.keyword == "PARAMETER" and i.args[0] == "model") for i in instructions
    ):
        raise ModelfileSyntaxError(
            "no FROM instruction",
            filename=filename,
            hint="a Modelfile needs FROM <source>: a .gguf/.onnx/.safetensors file, a Hugging Face "
            "folder, hf://org/repo[@revision] or a model name",
        )
    return Modelfile(instructions, filename=filename, text=text)


def parse_file(path: str | Path) -> Modelfile:
    """Read and parse a Modelfile as Ollama does: UTF-8 (BOM ignored), or UTF-16 LE/BE with a BOM.

    Invalid UTF-8 becomes U+FFFD, as in Ollama's decoder. Files over 16 MiB are refused.
    """
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ModelfileError(f"cannot read the Modelfile: {exc.strerror or exc}", filename=name) from None
    if len(data) > MAX_FILE_BYTES:
        raise ModelfileError(f"the Modelfile is larger than {MAX_FILE_BYTES} bytes", filename=name)
    if data.startswith(b"\xff\xfe"):
        text = data[2:].decode("utf-16-le", errors="replace")
    elif data.startswith(b"\xfe\xff"):
        text = data[2:].decode("utf-16-be", errors="replace")
    else:
        text = data.decode("utf-8-sig", errors="replace")
    return parse(text, filename=name)


def format(modelfile: Modelfile) -> str:
    """Canonical text for ``modelfile``: one instruction per line, keywords in upper case, values
    quoted only where needed. It parses back to the same instructions (comments are not kept).

    Raises :class:`ModelfileError` for a value no quoting can carry (say, with a line that ends in
    ``\"\"\"`` inside a multi-line text, or characters Ollama's parser drops).
    """
    return "".join(_format_instruction(i, modelfile.filename) + "\n" for i in modelfile.instructions)


# --- parsing ---------------------------------------------------------------------------------------


@cache
def _parser() -> Lark:
    return Lark(_grammar_path().read_text(encoding="utf-8"), parser="lalr", lexer="contextual")


def _grammar_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "grammar" / "modelfile.lark", here.parent / "grammar" / "modelfile.lark"):
        if candidate.is_file():
            return candidate
    raise ModelfileError(f"the Modelfile grammar is missing from the installation (looked beside {here})")


def _go_printable(c: str) -> bool:
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _normalize(text: str) -> str:
    """Replace each character Ollama drops (not Go-printable, not a blank or line break) by NUL."""
    dropped = {ord(c): 0 for c in set(text) if c not in " \t\r\n" and not _go_printable(c)}
    return text.translate(dropped) if dropped else text


def _instruction(source: SourceText, normal: str, node: Tree[Token]) -> Instruction:
    tokens = [t for t in node.children if isinstance(t, Token)]
    head = tokens[0]
    start = _span(head)[0]
    start += 1 if normal[start] == "\0" else 0
    keyword = str(head.value).replace("\0", "").upper()
    end = _span(tokens[-1])[1]
    line, column = source.locate(start)
    if keyword in EXTENSION_KEYWORDS:
        args, offsets = _words(source, tokens[1], keyword)
    else:
        args, offsets = [], []
        for token in tokens[1:]:
            raw = str(token.value)
            body = raw[1:]  # the separating blank
            skipped = len(body) - len(body.lstrip(" \t\0"))
            offsets.append(_span(token)[0] + 1 + skipped)
            args.append(decode_value(raw) if token.type == "VALUE" else body)
        if keyword == "MESSAGE" and args[0] not in MESSAGE_ROLES:
            raise source.error(
                ModelfileSyntaxError,
                offsets[0],
                f'invalid message role "{printable(args[0])}"',
                expected=MESSAGE_ROLES,
                hint=did_you_mean(args[0], MESSAGE_ROLES) if args[0] else None,
            )
    return Instruction(
        keyword,
        tuple(args),
        line,
        column,
        tuple(source.locate(o) for o in offsets),
        (start, end),
    )


def _span(token: Token) -> tuple[int, int]:
    """A token's [start, end) offsets (Lark types them as optional; the lexer always sets them)."""
    assert token.start_pos is not None and token.end_pos is not None
    return token.start_pos, token.end_pos


def _words(source: SourceText, token: Token, keyword: str) -> tuple[list[str], list[int]]:
    try:
        words = split_words(str(token.value), _span(token)[0])
    except WordsError as exc:
        raise source.error(ModelfileSyntaxError, exc.offset, f"{keyword}: {exc.message}") from None
    if not words:
        what = "a task" if keyword == "TASK" else "name[=default]" if keyword == "ARG" else "a value"
        raise source.error(ModelfileSyntaxError, _span(token)[1], f"{keyword} needs {what}")
    if keyword in _ONE_WORD and len(words) > 1:
        raise source.error(
            ModelfileSyntaxError,
            words[1][1],
            f"{keyword} takes one {'task' if keyword == 'TASK' else 'name[=default]'}",
            hint="write one per line" if keyword == "ARG" else None,
        )
    args = [w for w, _ in words]
    offsets = [o for _, o in words]
    if keyword == "ARG":
        name, eq, default = args[0].partition("=")
        args = [name, default] if eq else [name]
        offsets = [offsets[0], offsets[0] + len(name) + 1] if eq else offsets
    return args, offsets


def _syntax_error(source: SourceText, normal: str, exc: UnexpectedInput) -> ModelfileError:
    """Turn Lark's complaint into a positioned error that says what is wrong in Modelfile terms."""
    offset = getattr(exc, "pos_in_stream", None)
    token = getattr(exc, "token", None)
    if isinstance(token, Token) and isinstance(token.start_pos, int):
        offset = token.start_pos
    if not isinstance(offset, int):
        offset = len(normal)
    expected = set(getattr(exc, "allowed", None) or getattr(exc, "expected", None) or ())
    rest = normal[offset:]
    err = source.error
    if not rest:
        return err(ModelfileSyntaxError, offset, "unexpected end of the file")
    if expected & set(KEYWORDS):
        word_match = _WORD_AT.match(rest)
        word = source.text[offset : offset + (word_match.end() if word_match else 1)] or rest[0]
        letters = _LETTERS.match(rest)
        assert letters is not None  # the pattern matches the empty string
        name = letters.group(1)
        after = rest[letters.end() : letters.end() + 1]
        if name.upper() in KEYWORDS and after in ("", "\r", "\n"):
            return err(
                ModelfileSyntaxError,
                offset,
                f"{name.upper()} must be followed by a space and its value",
                hint=_USAGE.get(name.upper()),
            )
        return err(
            ModelfileSyntaxError,
            offset,
            f'unknown instruction "{printable(word, 40)}"',
            expected=KEYWORDS,
            hint=did_you_mean(name, KEYWORDS) if name else None,
        )
    if "PARAM_NAME" in expected or "ROLE" in expected:
        keyword = "PARAMETER" if "PARAM_NAME" in expected else "MESSAGE"
        what = "parameter name" if keyword == "PARAMETER" else "message role"
        name_match = (_NAME if keyword == "PARAMETER" else _ROLE).match(rest, 1)
        assert name_match is not None  # the patterns match the empty string
        name, bad = name_match.group(), name_match.end()
        if bad >= len(rest) or rest[bad] in "\r\n":
            message = f"{keyword} {printable(name, 40)} needs a value after it"
            return err(ModelfileSyntaxError, offset + bad, message, hint=_USAGE[keyword])
        word_match = _WORD_AT.match(rest, 1)
        word = source.text[offset + 1 : offset + (word_match.end() if word_match else 2)]
        allowed = "letters, digits and _" if keyword == "PARAMETER" else "system, user or assistant"
        message = f'invalid {what} "{printable(word, 40)}" (use {allowed})'
        return err(ModelfileSyntaxError, offset + bad, message, hint=_USAGE[keyword])
    if "VALUE" in expected:
        quote = offset + len(rest) - len(rest.lstrip(" \t\0"))
        closing = '"""' if rest.replace("\0", "").lstrip(" \t").startswith('"""') else '"'
        return err(
            ModelfileSyntaxError,
            quote,
            f"unterminated quote: this value never closes with {closing}",
            hint=f"a quoted value ends at the first line whose text ends with {closing}",
        )
    word_match = _WORD_AT.match(rest)
    word = source.text[offset : offset + (word_match.end() if word_match else 1)] or rest[0]
    return err(ModelfileSyntaxError, offset, f'unexpected text "{printable(word, 40)}"')


_WORD_AT: Final = re.compile(r"[^ \t\r\n]+")
_LETTERS: Final = re.compile(r"\0?([A-Za-z]*)")
_NAME: Final = re.compile(r"[A-Za-z0-9_]*")
_ROLE: Final = re.compile(r"[A-Za-z]*")


_USAGE: Final = {
    "FROM": "usage: FROM <file, folder, hf://org/repo[@revision] or name:tag>",
    "PARAMETER": "usage: PARAMETER <name> <value>, e.g. PARAMETER temperature 0.7",
    "TEMPLATE": 'usage: TEMPLATE """<Go template>"""',
    "SYSTEM": "usage: SYSTEM <system prompt>",
    "ADAPTER": "usage: ADAPTER <.gguf LoRA file or PEFT folder>",
    "LICENSE": 'usage: LICENSE """<license text>"""',
    "MESSAGE": "usage: MESSAGE <system|user|assistant> <content>",
    "REQUIRES": "usage: REQUIRES <version>, e.g. REQUIRES 0.6.0",
    "DRAFT": "usage: DRAFT <draft model for speculative decoding>",
    "RENDERER": "usage: RENDERER <name>",
    "PARSER": "usage: PARSER <name>",
    "QUANTIZE": "usage: QUANTIZE <type> … [requantize=true], e.g. QUANTIZE q8_0 q4_k_m",
    "TARGET": "usage: TARGET <device>[:detail] [BACKEND <backend>] [key=value …]",
    "TASK": "usage: TASK chat|generate|embed|classify|tensor",
    "LABEL": "usage: LABEL key=value …",
    "ARG": "usage: ARG name[=default]",
    "VERIFY": "usage: VERIFY min_agreement=<0..1> max_perplexity_ratio=<>=1> prompt=<text>",
}


# --- formatting -----------------------------------------------------------------------------------


def _format_instruction(instruction: Instruction, filename: str | None) -> str:
    keyword, args = instruction.keyword.upper(), instruction.args
    try:
        if keyword not in KEYWORDS:
            raise ValueError(f"unknown instruction {keyword!r}")
        if keyword in EXTENSION_KEYWORDS:
            words = ["=".join(args)] if keyword == "ARG" else list(args)
            if not words or (keyword in _ONE_WORD and len(words) != 1):
                raise ValueError(f"{keyword} takes {'one word' if keyword in _ONE_WORD else 'words'}")
            return f"{keyword} " + " ".join(quote_word(w) for w in words)
        if keyword in ("PARAMETER", "MESSAGE"):
            if len(args) != 2:
                raise ValueError(f"{keyword} takes two arguments")
            name, value = args
            allowed = set(
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                + "0123456789_" * (keyword == "PARAMETER")
            )
            if not set(name) <= allowed or (keyword == "MESSAGE" and name not in MESSAGE_ROLES):
                raise ValueError(f"invalid {'parameter name' if keyword == 'PARAMETER' else 'role'} {name!r}")
            return f"{keyword} {name} {quote_value(value)}"
        if len(args) != 1:
            raise ValueError(f"{keyword} takes one argument")
        return f"{keyword} {quote_value(args[0])}"
    except ValueError as exc:
        where = f" (line {instruction.line})" if instruction.line else ""
        raise ModelfileError(f"cannot format {keyword}{where}: {exc}", filename=filename) from None
