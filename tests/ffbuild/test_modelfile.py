"""ffbuild.modelfile: every instruction, quoting form, comment rule and syntax error, with positions;
format(); speed on a large file. Ollama's own behaviours are in test_modelfile_ollama.py."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from ffbuild.errors import ModelfileError, ModelfileSyntaxError
from ffbuild.modelfile import KEYWORDS, Instruction, Modelfile, format, parse

REPO = Path(__file__).resolve().parents[2]


def instructions(text: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(i.keyword, i.args) for i in parse(text).instructions]


# (text after "FROM base\n", expected (keyword, args) of the instruction it holds)
INSTRUCTIONS: list[tuple[str, tuple[str, tuple[str, ...]]]] = [
    ("PARAMETER temperature 0.7", ("PARAMETER", ("temperature", "0.7"))),
    ("TEMPLATE {{ .Prompt }}", ("TEMPLATE", ("{{ .Prompt }}",))),
    ("SYSTEM You are terse.", ("SYSTEM", ("You are terse.",))),
    ("ADAPTER ./lora.gguf", ("ADAPTER", ("./lora.gguf",))),
    ("LICENSE Apache-2.0", ("LICENSE", ("Apache-2.0",))),
    ("MESSAGE user Hi there", ("MESSAGE", ("user", "Hi there"))),
    ("MESSAGE assistant Hello", ("MESSAGE", ("assistant", "Hello"))),
    ("MESSAGE system Be brief", ("MESSAGE", ("system", "Be brief"))),
    ("REQUIRES 0.6.0", ("REQUIRES", ("0.6.0",))),
    ("DRAFT ./draft.gguf", ("DRAFT", ("./draft.gguf",))),
    ("RENDERER qwen3", ("RENDERER", ("qwen3",))),
    ("PARSER qwen3", ("PARSER", ("qwen3",))),
    # extensions: words, quotes removed, ${…} kept as written
    ("QUANTIZE q8_0 Q4_K_M requantize=true", ("QUANTIZE", ("q8_0", "Q4_K_M", "requantize=true"))),
    (
        "TARGET cuda:sm_90 BACKEND onnxruntime workspace=4G",
        ("TARGET", ("cuda:sm_90", "BACKEND", "onnxruntime", "workspace=4G")),
    ),
    ("TASK embed", ("TASK", ("embed",))),
    (
        'LABEL org.opencontainers.image.title="Small model" a=b',
        ("LABEL", ("org.opencontainers.image.title=Small model", "a=b")),
    ),
    ('LABEL "k=v w" x=""', ("LABEL", ("k=v w", "x="))),
    ('LABEL a=x"y z"w', ("LABEL", ("a=xy zw",))),
    ("ARG SOURCE", ("ARG", ("SOURCE",))),
    ("ARG SOURCE=hf://org/repo", ("ARG", ("SOURCE", "hf://org/repo"))),
    ("ARG SOURCE=", ("ARG", ("SOURCE", ""))),
    ('ARG PROMPT="a b=c"', ("ARG", ("PROMPT", "a b=c"))),
    (
        'VERIFY min_agreement=0.5 prompt="The capital of France is"',
        ("VERIFY", ("min_agreement=0.5", "prompt=The capital of France is")),
    ),
    ("FROM ${SOURCE}", ("FROM", ("${SOURCE}",))),
    ("quantize  q8_0\t f16  ", ("QUANTIZE", ("q8_0", "f16"))),
    ("Task chat", ("TASK", ("chat",))),
]


@pytest.mark.parametrize(("line", "expected"), INSTRUCTIONS, ids=[i[0][:40] for i in INSTRUCTIONS])
def test_every_instruction(line: str, expected: tuple[str, tuple[str, ...]]) -> None:
    parsed = instructions(f"FROM base\n{line}\n")
    assert parsed[0] == ("FROM", ("base",))
    assert parsed[-1] == expected


def test_every_keyword_is_covered() -> None:
    assert {kw for _, (kw, _) in INSTRUCTIONS} | {"FROM"} == set(KEYWORDS)


# Quoting forms: (value as written after "SYSTEM", the value parsed)
QUOTING: list[tuple[str, str]] = [
    ("plain text", "plain text"),
    ("  padded  ", "padded"),
    ('"  kept  "', "  kept  "),
    ('"""  kept  """', "  kept  "),
    ('"two\nlines"', "two\nlines"),
    ('"""two\nlines"""', "two\nlines"),
    ('"""\nopen\n"""', "\nopen\n"),
    ('"with "inner" quotes"', 'with "inner" quotes'),
    ('"""with "inner" quotes"""', 'with "inner" quotes'),
    ('""', ""),
    ('""""""', ""),
    ("no \\n escapes \\t here", "no \\n escapes \\t here"),
    ('unbalanced " in the middle', 'unbalanced " in the middle'),
    ("# not a comment", "# not a comment"),
    ('"""line one\n# still inside\nFROM still inside"""', "line one\n# still inside\nFROM still inside"),
]


@pytest.mark.parametrize(("written", "value"), QUOTING)
def test_quoting_forms(written: str, value: str) -> None:
    assert instructions(f"FROM x\nSYSTEM {written}\nPARAMETER seed 1\n") == [
        ("FROM", ("x",)),
        ("SYSTEM", (value,)),
        ("PARAMETER", ("seed", "1")),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# only at the start\nFROM x", [("FROM", ("x",))]),
        ("\t # after blanks too\nFROM x", [("FROM", ("x",))]),
        ("FROM x\n#FROM y\n", [("FROM", ("x",))]),
        ("FROM x # not here", [("FROM", ("x # not here",))]),
        (
            "FROM x\nQUANTIZE q8_0 # not here either",
            [("FROM", ("x",)), ("QUANTIZE", ("q8_0", "#", "not", "here", "either"))],
        ),
        ("FROM x\n\n\n   \n# a\n# b\nSYSTEM s", [("FROM", ("x",)), ("SYSTEM", ("s",))]),
    ],
)
def test_comment_rule(text: str, expected: list[tuple[str, tuple[str, ...]]]) -> None:
    assert instructions(text) == expected


def test_positions() -> None:
    text = '# c\nFROM ./x\n  PARAMETER  stop\t"a b"\r\nMESSAGE user hi\rTARGET cpu BACKEND llamacpp\n'
    mf = parse(text)
    assert [(i.keyword, i.line, i.column) for i in mf.instructions] == [
        ("FROM", 2, 1),
        ("PARAMETER", 3, 3),
        ("MESSAGE", 4, 1),
        ("TARGET", 5, 1),
    ]
    assert mf.instructions[0].arg_positions == ((2, 6),)
    assert mf.instructions[1].args == ("", 'stop\t"a b"')  # two blanks: Ollama's empty name
    assert mf.instructions[2].arg_positions == ((4, 9), (4, 14))
    assert mf.instructions[3].arg_positions == ((5, 8), (5, 12), (5, 20))
    start, end = mf.instructions[3].span
    assert text[start:end] == "TARGET cpu BACKEND llamacpp"
    assert mf.instructions[0] == Instruction("FROM", ("./x",))  # positions do not take part in ==


# (text, line, column, words the message must contain, hint or None)
ERRORS: list[tuple[str, int | None, int | None, str, str | None]] = [
    ("FROM x\nFORM ./y", 2, 1, 'unknown instruction "FORM"', "did you mean FROM?"),
    ("FROM x\n  SYSTEMS hi", 2, 3, 'unknown instruction "SYSTEMS"', "did you mean SYSTEM?"),
    ("FROM x\nQUANTISE q8_0", 2, 1, 'unknown instruction "QUANTISE"', "did you mean QUANTIZE?"),
    ("FROM x\nxyzzy", 2, 1, 'unknown instruction "xyzzy"', None),
    ("FROM x\n123 abc", 2, 1, 'unknown instruction "123"', None),
    ("FROM x\nSYSTEM", 2, 1, "SYSTEM must be followed by a space and its value", "usage: SYSTEM"),
    ("FROM\nx", 1, 1, "FROM must be followed by a space", "usage: FROM"),
    ("FROM x\nPARAMETER temperature\n", 2, 22, "PARAMETER temperature needs a value", "usage: PARAMETER"),
    ("FROM x\nPARAMETER top-k 40", 2, 14, 'invalid parameter name "top-k"', "usage: PARAMETER"),
    ("FROM x\nMESSAGE User hi", 2, 9, 'invalid message role "User"', "did you mean user?"),
    ("FROM x\nMESSAGE system\n", 2, 15, "MESSAGE system needs a value", "usage: MESSAGE"),
    ("FROM x\nMESSAGE us-er hi", 2, 11, 'invalid message role "us-er"', "usage: MESSAGE"),
    ('FROM x\nSYSTEM "open\nnever closed\n', 2, 8, "unterminated quote", 'ends with "'),
    ('FROM x\nSYSTEM  """open\n"', 2, 9, "unterminated quote", 'ends with """'),
    ('FROM x\nLABEL a="open', 2, 9, "LABEL: unterminated quote", None),
    ("FROM x\nTASK chat embed", 2, 11, "TASK takes one task", None),
    ("FROM x\nARG A=1 B=2", 2, 9, "ARG takes one name[=default]", "one per line"),
    ("FROM x\nQUANTIZE  \t ", 2, 13, "QUANTIZE needs a value", None),
    ("", None, None, "no FROM instruction", "FROM <source>"),
    ("# nothing\nSYSTEM s\n", None, None, "no FROM instruction", "FROM <source>"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "message", "hint"), ERRORS, ids=[e[3][:30] for e in ERRORS]
)
def test_syntax_errors(
    text: str, line: int | None, column: int | None, message: str, hint: str | None
) -> None:
    with pytest.raises(ModelfileSyntaxError) as info:
        parse(text, filename="dir/Modelfile")
    err = info.value
    assert message in err.message
    assert (err.line, err.column) == (line, column)
    if hint is not None:
        assert err.hint is not None and hint in err.hint
    rendered = str(err)
    if line is None:
        assert rendered.startswith("dir/Modelfile: error: ")
    else:
        assert rendered.startswith(f"dir/Modelfile:{line}:{column}: error: ")
        shown, caret = rendered.splitlines()[1:3]
        source_line = text.splitlines()[line - 1]
        assert shown == "  " + source_line.replace("\t", "    ")
        assert caret == "  " + " " * len(source_line[: column - 1].replace("\t", "    ")) + "^"


def test_error_rendering_matches_the_design() -> None:
    with pytest.raises(ModelfileError) as info:
        parse("FROM x\nSYSTEM s\nFORM ./x\n", filename="Modelfile")
    lines = str(info.value).splitlines()
    assert lines[0] == 'Modelfile:3:1: error: unknown instruction "FORM"'
    assert lines[1:3] == ["  FORM ./x", "  ^"]
    assert lines[3].startswith("expected one of: FROM, PARAMETER, ")
    assert lines[4] == "did you mean FROM?"


def test_error_rendering_is_safe_on_hostile_lines() -> None:
    evil = "FROM x\nFORM \x1b[31mred\x1b[0m " + "y" * 5000
    with pytest.raises(ModelfileError) as info:
        parse(evil)
    text = str(info.value)
    assert "\x1b" not in text  # control characters never reach the terminal
    assert all(len(line) < 260 for line in text.splitlines())  # long lines are cut around the caret


def test_tabs_and_wide_characters_keep_the_caret_aligned() -> None:
    with pytest.raises(ModelfileError) as info:
        parse("FROM x\n\t你好 oops\n")
    assert info.value.column == 2
    with pytest.raises(ModelfileError) as info:
        parse('FROM x\nSYSTEM 你好\nMESSAGE bot 你好"\n')
    shown, caret = str(info.value).splitlines()[1:3]
    assert caret.index("^") == shown.index("bot")


# --- format -------------------------------------------------------------------------------------------


def test_format_is_canonical() -> None:
    mf = parse(
        'from x\nparameter stop "<|im_end|>"\nsystem """  padded  """\nmessage user "hi"\n'
        'label k="a b"\ntask chat\narg A=1\nquantize Q8_0\n'
    )
    assert format(mf) == (
        'FROM x\nPARAMETER stop <|im_end|>\nSYSTEM """  padded  """\nMESSAGE user hi\n'
        'LABEL k="a b"\nTASK chat\nARG A=1\nQUANTIZE Q8_0\n'
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        "a",
        " lead",
        "trail ",
        '"quoted"',
        '"',
        '""',
        '"""',
        "multi\nline",
        'ends with quote"',
        'line "one"\nline two',
        '"\nx',
        '""\nx',
        "\r\nwindows\r\n",
        "tab\tinside",
        'a"""b',
        "\n",
        "#hash",
    ],
)
def test_format_round_trips_values(value: str) -> None:
    mf = Modelfile(
        [
            Instruction("FROM", ("x",)),
            Instruction("SYSTEM", (value,)),
            Instruction("PARAMETER", ("stop", value)),
        ]
    )
    assert parse(format(mf)) == mf


@pytest.mark.parametrize(
    ("instruction", "why"),
    [
        (Instruction("SYSTEM", ('a"""\nb',)), "no quoting can carry this value"),
        (Instruction("SYSTEM", ('x"\ny"""\nz',)), "no quoting can carry this value"),
        (Instruction("SYSTEM", ("zero\u200bwidth",)), "U+200B cannot be written"),
        (Instruction("LABEL", ('k=a"b',)), "cannot contain a double quote"),
        (Instruction("TASK", ("chat", "embed")), "TASK takes one word"),
        (Instruction("PARAMETER", ("top-k", "1")), "invalid parameter name"),
        (Instruction("MESSAGE", ("bot", "hi")), "invalid role"),
        (Instruction("NOPE", ("x",)), "unknown instruction"),
    ],
)
def test_format_refuses_what_cannot_be_written(instruction: Instruction, why: str) -> None:
    with pytest.raises(ModelfileError, match=re.escape(why)):
        format(Modelfile([Instruction("FROM", ("x",)), instruction]))


# --- speed ------------------------------------------------------------------------------------------


def _big(n: int) -> str:
    block = 'PARAMETER stop abc\nSYSTEM """\nhello\n"""\n# comment\nLABEL k="v w"\nMESSAGE user hi\n'
    return "FROM x\n" + block * (n // 8)  # 8 lines, 4 instructions a block


def test_parsing_is_linear_on_a_10k_line_file() -> None:
    parse(_big(700))  # warm up (grammar compiled once)

    def seconds(n: int) -> float:
        text = _big(n)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            mf = parse(text)
            best = min(best, time.perf_counter() - start)
        assert len(mf.instructions) == 1 + 4 * (n // 8)
        return best

    small, large = seconds(10_000), seconds(40_000)
    assert small < 2.0, f"10k lines took {small:.2f}s"
    assert large / small < 6.0, f"4x the lines took {large / small:.1f}x the time: not linear"


def test_a_huge_single_quoted_value_and_unterminated_one_stay_fast() -> None:
    body = "x" * 200_000 + "\n" + ('" ' * 50_000)
    start = time.perf_counter()
    assert parse(f'FROM a\nSYSTEM """{body}"""\n').instructions[1].args == (body,)
    with pytest.raises(ModelfileSyntaxError):
        parse(f'FROM a\nSYSTEM """{body}\n')
    assert time.perf_counter() - start < 5.0


def test_grammar_ships_in_the_wheel_and_loads_from_the_repo() -> None:
    import tomllib

    from ffbuild.modelfile import _grammar_path

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    assert include["grammar/modelfile.lark"] == "ffbuild/grammar/modelfile.lark"
    assert _grammar_path().read_text() == (REPO / "grammar" / "modelfile.lark").read_text()
