"""Errors about a Modelfile: what went wrong, where (file, line, column, the line itself), what was
expected and a hint (often a did-you-mean), rendered like a compiler's message::

    Modelfile:3:1: error: unknown instruction "FORM"
      FORM ./x
      ^
    expected one of: FROM, PARAMETER, …
    did you mean FROM?

Only these errors leave ``ffbuild.modelfile`` and ``ffbuild.plan``; nothing from Lark, and no traceback,
reaches a user. Text taken from a Modelfile is shown with its control characters escaped, so a hostile
file cannot drive the terminal.
"""

from __future__ import annotations

import bisect
import difflib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

DEFAULT_FILENAME = "Modelfile"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WINDOW = 100  # characters of a long line shown on each side of the caret


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``"did you mean X?"`` for the closest of ``choices`` (case-insensitive), or None."""
    options = list(choices)
    by_lower = {c.lower(): c for c in options}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean {by_lower[close[0]]}?" if close else None


def printable(text: str, limit: int = 80) -> str:
    """``text`` with control and other invisible characters escaped (``\\x1b``, ``\\u200b``), shortened."""
    out = "".join(c if _visible(c) else _escape(c) for c in text[: limit + 1])
    return out if len(text) <= limit else out[:limit] + "…"


def _clean(text: str) -> str:
    """``text`` with invisible characters escaped (line breaks and tabs kept), for the terminal."""
    return "".join(c if c in "\n\t" or _visible(c) else _escape(c) for c in text)


def _visible(c: str) -> bool:
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def _width(c: str) -> int:
    if c == "\t":
        return 4
    if not _visible(c):
        return 1  # shown as U+FFFD
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


class SourceText:
    """A Modelfile's text with its line starts, to turn offsets into (line, column) and back.

    Lines break at CR LF, CR or LF (as editors count them); columns count characters from 1.
    """

    def __init__(self, text: str, filename: str | None = None) -> None:
        self.text = text
        self.filename = filename
        self._starts = [0] + [m.end() for m in _LINE_BREAK.finditer(text)]

    @property
    def line_count(self) -> int:
        return len(self._starts)

    def locate(self, offset: int) -> tuple[int, int]:
        """1-based (line, column) of ``offset`` (clamped into the text)."""
        offset = max(0, min(offset, len(self.text)))
        index = bisect.bisect_right(self._starts, offset) - 1
        return index + 1, offset - self._starts[index] + 1

    def line(self, number: int) -> str:
        """The text of line ``number`` (1-based), without its line break."""
        if not 1 <= number <= len(self._starts):
            return ""
        start = self._starts[number - 1]
        end = self._starts[number] if number < len(self._starts) else len(self.text)
        return self.text[start:end].rstrip("\r\n")

    def offset(self, line: int, column: int) -> int:
        return self._starts[line - 1] + column - 1

    def error(self, cls: type[ModelfileError], offset: int, message: str, **kw: Any) -> ModelfileError:
        """An error of class ``cls`` pointing at ``offset``."""
        line, column = self.locate(offset)
        return cls(message, filename=self.filename, line=line, column=column, line_text=self.line(line), **kw)


class ModelfileError(Exception):
    """Anything wrong with a Modelfile, with its position when it has one.

    ``more`` holds further errors found in the same pass (the planner reports all it finds);
    ``str()`` renders them all.
    """

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = None,
        line: int | None = None,
        column: int | None = None,
        line_text: str | None = None,
        expected: Sequence[str] = (),
        hint: str | None = None,
        more: Sequence[ModelfileError] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        self.line_text = line_text
        self.expected = tuple(expected)
        self.hint = hint
        self.more = tuple(more)

    @property
    def errors(self) -> tuple[ModelfileError, ...]:
        """This error and the ones in ``more``."""
        return (self, *self.more)

    def render(self) -> str:
        """This error alone, as a compiler prints it."""
        where = self.filename or DEFAULT_FILENAME
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        lines = [f"{_clean(where)}: error: {_clean(self.message)}"]
        if self.line_text is not None and self.column is not None:
            lines.extend(_excerpt(self.line_text, self.column))
        if self.expected:
            lines.append("expected one of: " + _clean(", ".join(self.expected)))
        if self.hint:
            lines.append(_clean(self.hint))
        return "\n".join(lines)

    def __str__(self) -> str:
        return "\n\n".join(e.render() for e in self.errors)

    def to_dict(self) -> dict[str, Any]:
        """The error as plain data (for ``ff check --json``)."""
        return {
            "file": self.filename or DEFAULT_FILENAME,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "line_text": self.line_text,
            "expected": list(self.expected),
            "hint": self.hint,
        }


class ModelfileSyntaxError(ModelfileError):
    """The text is not a Modelfile (what Ollama's parser would also reject, or a malformed extension)."""


class ModelfilePlanError(ModelfileError):
    """The Modelfile parses but cannot be built as written (unknown parameter, missing file, …)."""


class Problem(ValueError):
    """A reason something is invalid, without a position yet; the planner adds where it happened.

    ``arg`` is the index of the offending instruction argument (or word), when known.
    """

    def __init__(
        self, message: str, *, hint: str | None = None, expected: Sequence[str] = (), arg: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.expected = tuple(expected)
        self.arg = arg


def _excerpt(line_text: str, column: int) -> list[str]:
    """The line (a window of it when long) with a caret under ``column``."""
    index = max(0, min(column - 1, len(line_text)))
    start = max(0, index - _WINDOW)
    end = min(len(line_text), index + _WINDOW)
    before = line_text[start:index]
    shown = "".join("    " if c == "\t" else c if _visible(c) else "\ufffd" for c in line_text[start:end])
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(line_text) else ""
    caret = " " * (len(prefix) + sum(_width(c) for c in before)) + "^"
    return [f"  {prefix}{shown}{suffix}", f"  {caret}"]
