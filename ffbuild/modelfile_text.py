"""How Modelfile values are written and read: Ollama's quoting for values, ff's words for extensions.

Reading: a value (after its keyword) is trimmed of blanks and line breaks, then loses one pair of outer
triple (three double quotes) or single ``"`` quotes; there are no escapes. Extension instructions take
words separated by blanks, where a word may contain ``"…"`` parts (``LABEL description="a b"`` →
``description=a b``).

Writing chooses the quoting that reads back to the same value, and refuses values that none can carry.
Characters Ollama's parser drops (those Go's ``strconv.IsPrint`` rejects, other than blanks and line
breaks) cannot be carried at all; the parser hands them over as NUL (see ``grammar/modelfile.lark``).
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r'(?:[^ \t"]|"[^"]*")+')
_BLANKS = " \t\r\n"


class WordsError(ValueError):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def decode_value(raw: str) -> str:
    """The value of a VALUE token (separator included): dropped characters removed, trimmed, unquoted."""
    t = raw.replace("\0", "").strip(_BLANKS)
    if len(t) >= 6 and t.startswith('"""') and t.endswith('"""'):
        return t[3:-3]
    if len(t) >= 2 and t.startswith('"') and not t.startswith('"""') and t.endswith('"'):
        return t[1:-1]
    return t


def split_words(raw: str, base: int) -> list[tuple[str, int]]:
    """The words of a WORDS token that starts at offset ``base``: (word without quotes, offset)."""
    out: list[tuple[str, int]] = []
    i, n = 0, len(raw)
    while True:
        while i < n and raw[i] in " \t":
            i += 1
        if i >= n:
            return out
        m = _WORD.match(raw, i)
        if m is None:
            raise WordsError('unterminated quote: a "…" part of a word must close on the same line', base + i)
        text = m.group()
        word = text.replace('"', "").replace("\0", "")
        if word or '"' in text:  # a word made only of dropped characters is no word
            out.append((word, base + i))
        i = m.end()


def quote_value(value: str) -> str:
    """``value`` written so that it reads back as itself: bare when it can be, else in triple quotes,
    else in ``"…"``; raise ValueError naming why when nothing works."""
    _check_printable(value)
    if value == "":
        return '""'
    plain = not (
        value[0] in _BLANKS or value[-1] in _BLANKS or value[0] == '"' or "\r" in value or "\n" in value
    )
    if plain:
        return value
    for quote in ('"""', '"'):
        candidate = quote + value + quote
        if quote == '"' and candidate.startswith('"""'):
            continue  # it would read as a """…""" value
        if _closes_only_at_end(candidate, quote):
            return candidate
    raise ValueError(
        'no quoting can carry this value: a line inside it ends with a double quote (""" or "), '
        "which would close the quoted value early"
    )


def quote_word(word: str) -> str:
    """An extension word written so that it reads back as itself."""
    _check_printable(word)
    if word and not any(c in ' \t"' for c in word):
        return word
    if any(c in word for c in '"\r\n'):
        raise ValueError(f"a word cannot contain a double quote or a line break: {word!r}")
    key, eq, value = word.partition("=")
    if eq and key and not any(c in " \t" for c in key):
        return f'{key}="{value}"'
    return f'"{word}"'


def _check_printable(text: str) -> None:
    for c in text:
        if c not in _BLANKS and c != " " and unicodedata.category(c)[0] not in "LMNPS":
            raise ValueError(f"U+{ord(c):04X} cannot be written in a Modelfile (Ollama's parser drops it)")


def _closes_only_at_end(candidate: str, quote: str) -> bool:
    """Whether a value written as ``candidate`` (opening with ``quote``) first closes at its very end.

    Ollama ends a quoted value at the first line end where the text so far, trimmed, ends with the
    closing quote (and is long enough not to reuse the opening one).
    """
    q = len(quote)
    last = -1  # index of the last non-blank character seen
    for i, c in enumerate(candidate):
        if c in "\r\n":
            if last + 1 >= 2 * q and candidate[last - q + 1 : last + 1] == quote:
                return False
        elif c not in " \t":
            last = i
    return True
