"""Ollama compatibility: the behaviours of Ollama's Modelfile parser (parser/parser.go and the cases
of its parser_test.go), checked one by one against ``ffbuild.modelfile.parse``.

``ollama_parse`` below is a reference model of Ollama's parser written for these tests: the same
character-by-character state machine (start of line / command name / value / parameter name / message
role / comment), the same quoting rule (a value ends at the first line end where the trimmed text so
far is unquoted or properly closed), the same dropping of non-printable characters. It is deliberately
structured nothing like the Lark grammar, so the two can check each other; the fuzz tests
(test_fuzz_modelfile.py) compare them on thousands of generated files.
"""

from __future__ import annotations

import unicodedata

import pytest

from ffbuild.errors import ModelfileError, ModelfileSyntaxError
from ffbuild.modelfile import Modelfile, parse, parse_file

OLLAMA_COMMANDS = (
    "from",
    "license",
    "template",
    "system",
    "adapter",
    "draft",
    "renderer",
    "parser",
    "parameter",
    "message",
    "requires",
)
# Go's unicode.IsSpace: what strings.TrimSpace removes.
GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    chr(c) for c in range(0x2000, 0x200B)
)


class OllamaError(Exception):
    """Ollama refuses the file; ``kind`` is one of: command, role, eof, from."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _go_print(c: str) -> bool:  # strconv.IsPrint
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
    if s[:1] == '"':
        return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
    return s, True


def _trim(s: str) -> str:
    start, end = 0, len(s)
    while start < end and s[start] in GO_SPACE:
        start += 1
    while end > start and s[end - 1] in GO_SPACE:
        end -= 1
    return s[start:end]


def ollama_parse(text: str) -> list[tuple[str, str]]:
    """Ollama's commands for ``text``: (name, args) with names as Ollama stores them ("model" for
    FROM, the parameter's own name for PARAMETER, "message" with "role: content" args)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    commands: list[tuple[str, str]] = []
    state, buf, name, role = "nil", "", "", ""
    for ch in text:
        blank, newline = ch in " \t", ch in "\r\n"
        # where this character takes the machine, and the character kept ("" when none)
        if state == "nil":
            nxt, keep = ("comment", "") if ch == "#" else ("nil", "") if blank or newline else ("name", ch)
        elif state == "name":
            if ch.isascii() and ch.isalpha():
                nxt, keep = "name", ch
            elif blank:
                nxt, keep = "value", ""
            else:
                raise OllamaError("command")
        elif state == "value":
            nxt, keep = ("nil", ch) if blank or newline else ("value", ch)
        elif state == "param":
            if (ch.isascii() and ch.isalnum()) or ch == "_":
                nxt, keep = "param", ch
            elif blank:
                nxt, keep = "value", ""
            else:
                raise OllamaError("eof")
        elif state == "message":
            if ch.isascii() and ch.isalpha():
                nxt, keep = "message", ch
            elif blank:
                nxt, keep = "value", ""
            else:
                raise OllamaError("eof")
        else:  # comment
            nxt, keep = ("nil", "") if newline else ("comment", "")
        if nxt != state:
            if state == "name":
                word = buf.lower()
                if word not in OLLAMA_COMMANDS:
                    raise OllamaError("command")
                if word == "parameter":
                    nxt = "param"
                elif word == "message":
                    nxt, name = "message", "message"
                else:
                    name = "model" if word == "from" else word
            elif state == "param":
                name = buf
            elif state == "message":
                if buf not in ("system", "user", "assistant"):
                    raise OllamaError("role")
                role = buf
            elif state == "value":
                value, ok = _unquote(_trim(buf))
                if not ok or blank:
                    buf += keep
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                role = ""
            buf, state = "", nxt
        if keep and _go_print(keep):
            buf += keep
    if state == "value":
        value, ok = _unquote(_trim(buf))
        if not ok:
            raise OllamaError("eof")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in ("nil", "comment"):
        raise OllamaError("eof")
    if not any(n == "model" for n, _ in commands):
        raise OllamaError("from")
    return commands


def as_ollama(modelfile: Modelfile) -> list[tuple[str, str]]:
    """Our instructions in Ollama's command form."""
    out = []
    for i in modelfile.instructions:
        if i.keyword == "FROM":
            out.append(("model", i.args[0]))
        elif i.keyword == "PARAMETER":
            out.append((i.args[0], i.args[1]))
        elif i.keyword == "MESSAGE":
            out.append(("message", f"{i.args[0]}: {i.args[1]}"))
        else:
            out.append((i.keyword.lower(), i.args[0]))
    return out


LLAMA3_TEMPLATE = (
    "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
    "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>"
)

# (input, Ollama's commands) for files Ollama accepts: the behaviours of its parser_test.go.
ACCEPTED: list[tuple[str, list[tuple[str, str]]]] = [
    # a whole file; a TEMPLATE in triple quotes over lines, with blanks after the closing quotes
    (
        "\nFROM model1\nADAPTER adapter1\nLICENSE MIT\nPARAMETER param1 value1\nPARAMETER param2 value2\n"
        f'TEMPLATE """{LLAMA3_TEMPLATE}"""    \n',
        [
            ("model", "model1"),
            ("adapter", "adapter1"),
            ("license", "MIT"),
            ("param1", "value1"),
            ("param2", "value2"),
            ("template", LLAMA3_TEMPLATE),
        ],
    ),
    ("\nFROM base\nDRAFT ./assistant\n", [("model", "base"), ("draft", "./assistant")]),
    # blanks: trimmed outside quotes, kept inside
    (
        '\nFROM "     model 1"\nADAPTER      adapter3\nLICENSE "MIT       "\nPARAMETER param1        value1\n'
        f'PARAMETER param2    value2\nTEMPLATE """   {LLAMA3_TEMPLATE}   """    \n',
        [
            ("model", "     model 1"),
            ("adapter", "adapter3"),
            ("license", "MIT       "),
            ("param1", "value1"),
            ("param2", "value2"),
            ("template", f"   {LLAMA3_TEMPLATE}   "),
        ],
    ),
    ('FROM "FOO  BAR  "', [("model", "FOO  BAR  ")]),
    ('FROM "FOO BAR"\nPARAMETER param1 value1', [("model", "FOO BAR"), ("param1", "value1")]),
    ("FROM     FOOO BAR    ", [("model", "FOOO BAR")]),
    ("FROM /what/is/the path ", [("model", "/what/is/the path")]),
    ("FROM foo", [("model", "foo")]),
    ("FROM /path/to/model", [("model", "/path/to/model")]),
    ("FROM /path/to/model/fp16.bin", [("model", "/path/to/model/fp16.bin")]),
    ("FROM llama3:latest", [("model", "llama3:latest")]),
    ("FROM llama3:7b-instruct-q4_K_M", [("model", "llama3:7b-instruct-q4_K_M")]),
    ("PARAMETER param1 value1\nFROM foo", [("param1", "value1"), ("model", "foo")]),
    ("PARAMETER what the \nFROM lemons make lemonade ", [("what", "the"), ("model", "lemons make lemonade")]),
    ("\nFROM foo\nRENDERER renderer1\n", [("model", "foo"), ("renderer", "renderer1")]),
    ("\nFROM foo\nPARSER parser1\n", [("model", "foo"), ("parser", "parser1")]),
    # messages
    (
        "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\n",
        [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")],
    ),
    (
        "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.",
        [("model", "foo"), ("message", "system: You are a file parser. Always parse things.")],
    ),
    (
        "\nFROM foo\nMESSAGE system You are a file parser. Always parse things.\nMESSAGE user Hey there!\n"
        "MESSAGE assistant Hello, I want to parse all the things!\n",
        [
            ("model", "foo"),
            ("message", "system: You are a file parser. Always parse things."),
            ("message", "user: Hey there!"),
            ("message", "assistant: Hello, I want to parse all the things!"),
        ],
    ),
    (
        '\nFROM foo\nMESSAGE system """\nYou are a multiline file parser. Always parse things.\n"""\n\t\t\t',
        [("model", "foo"), ("message", "system: \nYou are a multiline file parser. Always parse things.\n")],
    ),
    # quoting
    (
        '\nFROM foo\nSYSTEM """\nThis is a\nmultiline system.\n"""\n\t\t\t',
        [("model", "foo"), ("system", "\nThis is a\nmultiline system.\n")],
    ),
    (
        '\nFROM foo\nSYSTEM """\nThis is a\nmultiline system."""\n\t\t\t',
        [("model", "foo"), ("system", "\nThis is a\nmultiline system.")],
    ),
    (
        '\nFROM foo\nSYSTEM """This is a\nmultiline system."""\n\t\t\t',
        [("model", "foo"), ("system", "This is a\nmultiline system.")],
    ),
    (
        '\nFROM foo\nSYSTEM """This is a multiline system."""\n\t\t\t',
        [("model", "foo"), ("system", "This is a multiline system.")],
    ),
    (
        '\nFROM foo\nSYSTEM """\nThis is a multiline system with "quotes".\n"""\n',
        [("model", "foo"), ("system", '\nThis is a multiline system with "quotes".\n')],
    ),
    ('\nFROM foo\nSYSTEM """"""\n', [("model", "foo"), ("system", "")]),
    ('\nFROM foo\nSYSTEM ""\n', [("model", "foo"), ("system", "")]),
    ('\nFROM foo\nSYSTEM "\'"\n', [("model", "foo"), ("system", "'")]),
    (
        '\nFROM foo\nSYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""\n',
        [("model", "foo"), ("system", "''\"'\"\"'\"\"'\"'''''\"\"'\"\"'")],
    ),
    ('\nFROM foo\nTEMPLATE """\n{{ .Prompt }}\n"""', [("model", "foo"), ("template", "\n{{ .Prompt }}\n")]),
    # comments, and a keyword after a tab (multi-byte values)
    ("\n# comment\nFROM foo\n\t", [("model", "foo")]),
    ("FROM test\n\tSYSTEM 你好👋", [("model", "test"), ("system", "你好👋")]),
]

# Each "PARAMETER <line>" of Ollama's parameter table, after "FROM foo".
PARAMETER_LINES: list[tuple[str, tuple[str, str]]] = [
    ("numa true", ("numa", "true")),
    ("num_ctx 1", ("num_ctx", "1")),
    ("num_batch 1", ("num_batch", "1")),
    ("num_gqa 1", ("num_gqa", "1")),
    ("num_gpu 1", ("num_gpu", "1")),
    ("main_gpu 1", ("main_gpu", "1")),
    ("use_mmap true", ("use_mmap", "true")),
    ("num_thread 1", ("num_thread", "1")),
    ("num_keep 1", ("num_keep", "1")),
    ("seed 1", ("seed", "1")),
    ("num_predict 1", ("num_predict", "1")),
    ("top_k 1", ("top_k", "1")),
    ("top_p 1.0", ("top_p", "1.0")),
    ("min_p 0.05", ("min_p", "0.05")),
    ("typical_p 1.0", ("typical_p", "1.0")),
    ("repeat_last_n 1", ("repeat_last_n", "1")),
    ("temperature 1.0", ("temperature", "1.0")),
    ("repeat_penalty 1.0", ("repeat_penalty", "1.0")),
    ("presence_penalty 1.0", ("presence_penalty", "1.0")),
    ("frequency_penalty 1.0", ("frequency_penalty", "1.0")),
    ("penalize_newline true", ("penalize_newline", "true")),
    ("stop ### User:", ("stop", "### User:")),
    ("stop ### User: ", ("stop", "### User:")),
    ('stop "### User:"', ("stop", "### User:")),
    ('stop "### User: "', ("stop", "### User: ")),
    ('stop """### User:"""', ("stop", "### User:")),
    ('stop """### User:\n"""', ("stop", "### User:\n")),
    ("stop <|endoftext|>", ("stop", "<|endoftext|>")),
    ("stop <|eot_id|>", ("stop", "<|eot_id|>")),
    ("stop </s>", ("stop", "</s>")),
]

# (input, Ollama's error kind) for files Ollama refuses.
REJECTED: list[tuple[str, str]] = [
    ("", "from"),
    ("PARAMETER param1 value1", "from"),
    ("\nFROM foo\nPARAMETER param1\n", "eof"),
    ("\nFROM foo\nBADCOMMAND param1 value1\n", "command"),
    ("\nFROM foo\nMESSAGE badguy I'm a bad guy!\n", "role"),
    ("\nFROM foo\nMESSAGE system\n", "eof"),
    ("\nFROM foo\nMESSAGE system", "eof"),
    ('\nFROM foo\nSYSTEM """This is a multiline system.""\n\t\t\t', "eof"),
    ('\nFROM foo\nSYSTEM "\n\t\t\t', "eof"),
]

# More behaviours that follow from Ollama's parser, beyond its own tests.
MORE_ACCEPTED: list[tuple[str, list[tuple[str, str]]]] = [
    ("from x\nsystem hi", [("model", "x"), ("system", "hi")]),  # keywords in any case
    ("FrOm x\nSyStEm hi", [("model", "x"), ("system", "hi")]),
    ("FROM\tx\tand\ty\t", [("model", "x\tand\ty")]),  # a tab separates too
    ("FROM x # not a comment", [("model", "x # not a comment")]),  # '#' only starts a line
    ("   # indented comment\nFROM x", [("model", "x")]),
    ("FROM x\r\nSYSTEM a\r\n", [("model", "x"), ("system", "a")]),  # CRLF
    ("FROM x\rSYSTEM a\r", [("model", "x"), ("system", "a")]),  # lone CR ends a line too
    ('FROM x\r\nSYSTEM """a\r\nb"""\r\n', [("model", "x"), ("system", "a\r\nb")]),
    ("FROM x\nSYSTEM \n", [("model", "x"), ("system", "")]),  # an empty value
    ("FROM ", [("model", "")]),
    ('FROM x\nSYSTEM "a" b\nc"\n', [("model", "x"), ("system", 'a" b\nc')]),  # closes at a line's end only
    ('FROM x\nSYSTEM "" "\n', [("model", "x"), ("system", '" ')]),
    ('FROM x\nSYSTEM """""""\n', [("model", "x"), ("system", '"')]),
    ('FROM x\nSYSTEM """a""""\n', [("model", "x"), ("system", 'a"')]),
    ('FROM x\nSYSTEM "a""\n', [("model", "x"), ("system", 'a"')]),
    ('FROM x\nSYSTEM """"\nb"""\n', [("model", "x"), ("system", '"\nb')]),
    ('FROM x\nSYSTEM "\n"\n', [("model", "x"), ("system", "\n")]),
    ('FROM x\nSYSTEM "a\n\n  b"  \n', [("model", "x"), ("system", "a\n\n  b")]),
    ('FROM x\nSYSTEM he said "hi"\n', [("model", "x"), ("system", 'he said "hi"')]),
    ("FROM x\nSYSTEM a\u200bb\x07c\n", [("model", "x"), ("system", "abc")]),  # non-printables are dropped
    ('FROM x\nSYSTEM \u200b"quoted"\n', [("model", "x"), ("system", "quoted")]),
    ("\u200bFROM x", [("model", "x")]),  # one dropped character may precede a keyword
    ("FROM x\n\ufeffSYSTEM a", [("model", "x"), ("system", "a")]),
    ("\ufeffFROM x", [("model", "x")]),  # a byte order mark is ignored
    ("FROM x\nPARAMETER  stop x", [("model", "x"), ("", "stop x")]),  # two blanks: an empty name
    ("FROM x\nPARAMETER Temperature 1", [("model", "x"), ("Temperature", "1")]),  # names keep their case
    ("FROM x\nPARAMETER 0_a 1", [("model", "x"), ("0_a", "1")]),
    ("FROM x\nMESSAGE user ", [("model", "x"), ("message", "user: ")]),
    ("FROM x\nMESSAGE user a: b", [("model", "x"), ("message", "user: a: b")]),
    ("PARAMETER model x", [("model", "x")]),  # Ollama's own naming makes this a FROM
    ("FROM a\nFROM b", [("model", "a"), ("model", "b")]),
]

MORE_REJECTED: list[tuple[str, str]] = [
    ("FROM", "eof"),
    ("FROM\nx", "command"),
    ("FROMx y", "command"),
    ("FROM1 x", "command"),
    ("FROM x\nSYSTEM", "eof"),
    ("FROM x\n\u200b\u200bSYSTEM a", "command"),
    ("FROM x\n\u200b SYSTEM a", "command"),
    ("FROM x\nSY\u200bSTEM a", "command"),
    ("FROM x\nPARAMETER top-k 1", "eof"),
    ("FROM x\nPARAMETER stop", "eof"),
    ("FROM x\nMESSAGE User hi", "role"),
    ("FROM x\nMESSAGE us3r hi", "eof"),
    ("FROM x\nMESSAGE  hi", "role"),
    ('FROM x\nSYSTEM """', "eof"),
    ('FROM x\nSYSTEM """""', "eof"),
    ('FROM x\nSYSTEM """abc"""x\n', "eof"),
    ("FROM x\nQUANTIZE q8_0", "command"),  # ff's extensions are not Ollama's
]


def _check_accepted(text: str, expected: list[tuple[str, str]]) -> None:
    assert ollama_parse(text) == expected  # the reference model agrees with Ollama's tests
    assert as_ollama(parse(text)) == expected


@pytest.mark.parametrize(("text", "expected"), ACCEPTED + MORE_ACCEPTED)
def test_ollama_accepts(text: str, expected: list[tuple[str, str]]) -> None:
    _check_accepted(text, expected)


@pytest.mark.parametrize(("line", "expected"), PARAMETER_LINES, ids=[p[0] for p in PARAMETER_LINES])
def test_ollama_parameter_lines(line: str, expected: tuple[str, str]) -> None:
    _check_accepted(f"FROM foo\nPARAMETER {line}\n", [("model", "foo"), expected])


@pytest.mark.parametrize(("text", "kind"), REJECTED + MORE_REJECTED)
def test_ollama_rejects(text: str, kind: str) -> None:
    with pytest.raises(OllamaError) as ollama:
        ollama_parse(text)
    assert ollama.value.kind == kind
    if "QUANTIZE" in text:
        parse(text)  # an extension: ff accepts it
        return
    with pytest.raises(ModelfileSyntaxError) as ours:
        parse(text)
    err = ours.value
    if kind == "from":
        assert err.line is None and "FROM" in err.message
    else:
        assert err.line is not None and err.column is not None


def test_format_round_trips_ollama_cases() -> None:
    """Ollama's format→parse cases, and every accepted case above."""
    from ffbuild.modelfile import format

    for text, _ in ACCEPTED + MORE_ACCEPTED:
        first = parse(text)
        assert parse(format(first)) == first, text


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8", "utf-8-sig"])
def test_parse_file_encodings(tmp_path, encoding: str) -> None:  # type: ignore[no-untyped-def]
    data = "FROM bob\nPARAMETER param1 1\nPARAMETER param2 4096\nSYSTEM You are a utf16 file 你好👋.\n"
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(encoding, b"")
    path = tmp_path / "Modelfile"
    path.write_bytes(bom + data.encode(encoding))
    assert as_ollama(parse_file(path)) == [
        ("model", "bob"),
        ("param1", "1"),
        ("param2", "4096"),
        ("system", "You are a utf16 file 你好👋."),
    ]


def test_parse_file_errors_are_modelfile_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelfileError, match="cannot read"):
        parse_file(tmp_path / "missing")
    with pytest.raises(ModelfileError, match="cannot read"):
        parse_file(tmp_path)
    bad = tmp_path / "bad"
    bad.write_bytes(b"FROM x\nSYSTEM \xff\xfeok\n")  # invalid UTF-8 becomes U+FFFD, as in Ollama
    assert parse_file(bad).instructions[1].args == ("\ufffd\ufffdok",)
