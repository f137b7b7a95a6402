"""Property tests: thousands of random and mutated Modelfiles.

For every input: parsing (and planning, for mutated examples) raises nothing but ModelfileError, and
every error points inside the input; what parses formats back to the same instructions (or format
says why it cannot); and the parser agrees with the reference model of Ollama's parser
(test_modelfile_ollama.ollama_parse): a file Ollama accepts gives Ollama's commands, and a file
Ollama refuses only parses when it uses one of ff's extensions.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_modelfile_ollama import OllamaError, as_ollama, ollama_parse

from ffbuild.errors import ModelfileError, SourceText
from ffbuild.modelfile import EXTENSION_KEYWORDS, KEYWORDS, Modelfile, format, parse
from ffbuild.planner import make_plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "modelfiles").glob("*/Modelfile"))
EXAMPLE_TEXTS = {p: p.read_text(encoding="utf-8") for p in EXAMPLES}


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


_KEYWORD_SPELLINGS = [k for kw in KEYWORDS for k in (kw, kw.lower(), kw.capitalize())] + [
    "FORM",
    "BADCOMMAND",
]
PIECES = [
    " ",
    "  ",
    "\t",
    "\n",
    "\n",
    "\r\n",
    "\r",
    '"',
    '"',
    '""',
    '"""',
    '"""',
    "#",
    "# comment\n",
    "=",
    ":",
    "${SOURCE}",
    "${X}",
    "${",
    "}",
    "$",
    "x",
    "./model.gguf",
    "hf://org/repo@main",
    "llama3:8b",
    "q8_0",
    "Q4_K_M",
    "int8",
    "requantize=true",
    "cpu",
    "cuda:sm_90",
    "BACKEND",
    "onnxruntime",
    "tensorrt",
    "user",
    "system",
    "assistant",
    "stop",
    "temperature",
    "top-k",
    "0.5",
    "1e40",
    "nan",
    "true",
    "k=v",
    'k="a b"',
    "a" * 300,
    "/" + "x/" * 2100,
    "\ufeff",
    "\x00",
    "\u200b",
    "\x07",
    "\x0b",
    "\x0c",
    "\xa0",
    "\u2028",
    "\x85",
    "é",
    "你好",
    "👋",
    "\U0010fffd",
]
piece = st.one_of(st.sampled_from(PIECES), st.sampled_from(_KEYWORD_SPELLINGS), st.text(max_size=3))
line = st.tuples(
    st.sampled_from(["", "", " ", "\t", "\u200b"]),
    st.sampled_from(_KEYWORD_SPELLINGS),
    st.sampled_from([" ", " ", "\t", "  ", "", "\n"]),
    st.lists(piece, max_size=8).map("".join),
    st.sampled_from(["\n", "\n", "\r\n", "\r", ""]),
).map("".join)
modelfile_text = st.lists(st.one_of(line, line, piece), max_size=25).map("".join)

# Mostly well-formed files, to exercise what Ollama accepts: quoted values over lines included.
_inner = st.lists(
    st.sampled_from(
        ["a", "b c", " ", "\t", "\n", "\r\n", '"', '""', "'", "#", "${X}", "你好", "\u200b", "FROM x"]
    ),
    max_size=8,
).map("".join)
value = st.one_of(
    _inner.filter(lambda v: "\n" not in v and "\r" not in v),
    st.builds(lambda v: f'"{v}"', _inner),
    st.builds(lambda v: f'"""{v}"""', _inner),
    st.builds(lambda q, v: q + v, st.sampled_from(['"', '"""']), _inner),  # often unterminated
)
blank = st.sampled_from([" ", " ", "\t", "  "])
eol = st.sampled_from(["\n", "\n", "\r\n", " \n", "\t\n"])
_value_keywords = [k for k in KEYWORDS if k not in ("PARAMETER", "MESSAGE", *EXTENSION_KEYWORDS)]
structured_line = st.one_of(
    st.builds(lambda k, b, v, e: f"{k}{b}{v}{e}", st.sampled_from(_value_keywords), blank, value, eol),
    st.builds(
        lambda b, n, b2, v, e: f"PARAMETER{b}{n}{b2}{v}{e}",
        blank,
        st.sampled_from(["stop", "temperature", "num_ctx", "x_1", "Top_K"]),
        blank,
        value,
        eol,
    ),
    st.builds(
        lambda b, r, b2, v, e: f"message{b}{r}{b2}{v}{e}",
        blank,
        st.sampled_from(["system", "user", "assistant", "assistant", "User"]),
        blank,
        value,
        eol,
    ),
    st.sampled_from(["# a comment\n", "\n", "   \n", "\t# indented\n"]),
)
structured_text = st.builds(
    lambda head, lines: head + "".join(lines),
    st.sampled_from(["FROM x\n", "from ./m.gguf\n", "", "\ufeffFROM x\r\n"]),
    st.lists(structured_line, max_size=12),
)


def check_error(err: ModelfileError, text: str) -> None:
    """The error (and each it carries) points inside the input and renders."""
    source = SourceText(text[1:] if text.startswith("\ufeff") else text)
    for e in err.errors:
        assert isinstance(e, ModelfileError)
        if e.line is not None:
            assert 1 <= e.line <= source.line_count, (e.line, source.line_count)
            assert e.column is not None
            assert 1 <= e.column <= len(source.line(e.line)) + 1, (e.column, source.line(e.line))
            assert e.line_text == source.line(e.line)
        rendered = e.render()
        assert ": error: " in rendered and "\x1b" not in rendered


def check_parsed(mf: Modelfile) -> None:
    for ins in mf.instructions:
        assert ins.keyword in KEYWORDS
        assert all("\0" not in a for a in ins.args)
        assert len(ins.arg_positions) == len(ins.args)
    try:
        again = parse(format(mf))
    except ModelfileError as exc:
        assert "cannot format" in exc.message
        return
    assert again == mf


def check_against_ollama(text: str, ours: Modelfile | None) -> None:
    try:
        expected: list[tuple[str, str]] | None = ollama_parse(text)
    except OllamaError:
        expected = None
    if expected is not None:
        assert ours is not None, "Ollama accepts this file but ff does not"
        assert as_ollama(ours) == expected
    elif ours is not None:
        assert any(i.keyword in EXTENSION_KEYWORDS for i in ours.instructions), (
            "Ollama refuses this file and it uses no extension, yet ff accepts it"
        )


def try_parse(text: str) -> Modelfile | None:
    try:
        mf = parse(text)
    except ModelfileError as exc:
        check_error(exc, text)
        return None
    check_parsed(mf)
    return mf


@fuzz(1200)
@given(modelfile_text)
def test_random_text(text: str) -> None:
    check_against_ollama(text, try_parse(text))


@fuzz(1500)
@given(structured_text)
def test_structured_text(text: str) -> None:
    check_against_ollama(text, try_parse(text))


@fuzz(400)
@given(st.text(max_size=200))
def test_arbitrary_unicode(text: str) -> None:
    check_against_ollama(text, try_parse(text))


MUTATIONS = ("insert", "delete", "replace", "duplicate-line", "swap-lines", "upper", "strip-newlines")


@fuzz(1200)
@given(st.data())
def test_mutated_examples(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(EXAMPLES))
    text = EXAMPLE_TEXTS[path]
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(MUTATIONS))
        at = data.draw(st.integers(0, len(text)))
        if op == "insert":
            text = text[:at] + data.draw(piece) + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 12)) :]
        elif op == "replace" and at < len(text):
            text = text[:at] + data.draw(st.sampled_from(PIECES)) + text[at + 1 :]
        elif op in ("duplicate-line", "swap-lines"):
            lines = text.split("\n")
            i, j = (data.draw(st.integers(0, len(lines) - 1)) for _ in range(2))
            if op == "duplicate-line":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
        elif op == "upper":
            text = text[:at] + text[at : at + 40].upper() + text[at + 40 :]
        elif op == "strip-newlines":
            text = text[:at] + text[at : at + 40].replace("\n", " ") + text[at + 40 :]
    mf = try_parse(text)
    check_against_ollama(text, mf)
    if mf is None:
        return
    args = data.draw(
        st.dictionaries(st.sampled_from(["SOURCE", "WEIGHTS", "LORA", "X"]), st.sampled_from(PIECES))
    )
    try:
        plan = make_plan(mf, context=path.parent, modelfile_path=path, build_args=args)
    except ModelfileError as exc:
        check_error(exc, text)
        return
    assert plan.variants and plan.task


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 7
