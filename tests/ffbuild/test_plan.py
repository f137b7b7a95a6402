"""The planner: PARAMETER typing (as Ollama's api.Options), ARG substitution, what each instruction
means in the plan, error collection, and the plan as JSON. Sources and variants have their own files."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffbuild.errors import ModelfileError, ModelfilePlanError
from ffbuild.modelfile import parse
from ffbuild.params import DEPRECATED_PARAMETERS, PARAMETERS
from ffbuild.plan import BuildPlan, Message
from ffbuild.planner import make_plan, plan_file


def plan(text: str, tmp_path: Path, **kw: object) -> BuildPlan:
    return make_plan(parse(text, filename="Modelfile"), context=tmp_path, **kw)  # type: ignore[arg-type]


def plan_error(text: str, tmp_path: Path, **kw: object) -> ModelfileError:
    with pytest.raises(ModelfilePlanError) as info:
        plan(text, tmp_path, **kw)
    return info.value


# --- parameters ------------------------------------------------------------------------------------

# (name, written value, typed value), as Go's strconv reads them for Ollama
TYPED: list[tuple[str, str, object]] = [
    ("num_ctx", "4096", 4096),
    ("num_ctx", "+8", 8),
    ("seed", "-1", -1),
    ("seed", "9223372036854775807", 2**63 - 1),
    ("num_gpu", "0", 0),
    ("main_gpu", "1", 1),
    ("num_batch", "512", 512),
    ("num_thread", "2", 2),
    ("num_keep", "4", 4),
    ("num_predict", "-2", -2),
    ("top_k", "40", 40),
    ("repeat_last_n", "64", 64),
    ("temperature", "0.7", 0.7),
    ("temperature", "1", 1.0),
    ("temperature", ".5", 0.5),
    ("temperature", "5.", 5.0),
    ("top_p", "9e-1", 0.9),
    ("min_p", "0x1p-2", 0.25),
    ("typical_p", "-0", 0.0),
    ("repeat_penalty", "1.1", 1.1),
    ("presence_penalty", "3.4e38", 3.4e38),
    ("frequency_penalty", "1e-50", 1e-50),
    ("mirostat", "2", 2),  # deprecated by Ollama, used by ff (as a request's options.mirostat is)
    ("mirostat_tau", "5.0", 5.0),
    ("mirostat_eta", "0.1", 0.1),
    ("use_mmap", "true", True),
    ("use_mmap", "True", True),
    ("use_mmap", "t", True),
    ("use_mmap", "1", True),
    ("use_mmap", "FALSE", False),
    ("use_mmap", "f", False),
    ("use_mmap", "0", False),
    ("stop", "<|im_end|>", ["<|im_end|>"]),
]


@pytest.mark.parametrize(("name", "written", "typed"), TYPED)
def test_parameter_types(tmp_path: Path, name: str, written: str, typed: object) -> None:
    value = plan(f"FROM llama3\nPARAMETER {name} {written}\n", tmp_path).parameters[name]
    assert value == typed and type(value) is type(typed)


def test_every_parameter_is_covered() -> None:
    assert {n for n, _, _ in TYPED} == set(PARAMETERS)


# (line, message, column)
BAD_PARAMETERS: list[tuple[str, str, int]] = [
    ("temprature 1", 'unknown parameter "temprature"', 11),
    ("Temperature 1", 'unknown parameter "Temperature"', 11),  # names are case-sensitive, as in Ollama
    ("numa true", 'unknown parameter "numa"', 11),  # gone from Ollama's options
    ("template {{ .Prompt }}", '"template" is not a parameter', 11),
    ("model llama3", '"model" is not a parameter', 11),
    ("num_ctx 1.0", "parameter num_ctx: '1.0' is not an integer", 19),
    ("num_ctx 1_000", "parameter num_ctx: '1_000' is not an integer", 19),
    ("num_ctx 0x10", "parameter num_ctx: '0x10' is not an integer", 19),
    ("seed 9223372036854775808", "out of range for a 64-bit integer", 16),
    ("temperature hot", "parameter temperature: 'hot' is not a number", 23),
    ("temperature 1,5", "'1,5' is not a number", 23),
    ("temperature 3.5e38", "out of range for a 32-bit float", 23),
    ("temperature 0x1p200", "out of range for a 32-bit float", 23),
    ("temperature nan", "'nan' is not a finite number", 23),
    ("temperature -Inf", "'-Inf' is not a finite number", 23),
    ("temperature 1_0.5", "is not a number", 23),
    ("use_mmap yes", "parameter use_mmap: 'yes' is not a boolean", 20),
    ("use_mmap tRUE", "is not a boolean", 20),
    ("mirostat 3", "parameter mirostat: 3 is not one of 0, 1 or 2", 20),
    ("mirostat 1.0", "parameter mirostat: '1.0' is not an integer", 20),
]


@pytest.mark.parametrize(("line", "message", "column"), BAD_PARAMETERS)
def test_bad_parameters(tmp_path: Path, line: str, message: str, column: int) -> None:
    err = plan_error(f"FROM llama3\nPARAMETER {line}\n", tmp_path)
    assert message in err.message and (err.line, err.column) == (2, column), str(err)


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("temprature 1", "did you mean temperature?"),
        ("top-p 1", None),  # a syntax error, not a planner one: checked below
        ("num_thrad 2", "did you mean num_thread?"),
        ("system You are a bot", "write SYSTEM You are a bot"),
        ("frobnicate 1", "known parameters: num_ctx, num_batch"),
        ("use_mmap yes", "use true or false"),
        ("num_ctx big", "num_ctx takes an integer"),
        ("mirostat 3", "mirostat takes 0, 1 or 2"),
    ],
)
def test_parameter_hints(tmp_path: Path, line: str, hint: str | None) -> None:
    if hint is None:
        with pytest.raises(ModelfileError, match="invalid parameter name"):
            plan(f"FROM llama3\nPARAMETER {line}\n", tmp_path)
        return
    err = plan_error(f"FROM llama3\nPARAMETER {line}\n", tmp_path)
    assert err.hint is not None and err.hint.startswith(hint)


def test_stop_accumulates_and_the_last_value_wins_for_the_rest(tmp_path: Path) -> None:
    p = plan(
        'FROM llama3\nPARAMETER stop a\nPARAMETER temperature 0.1\nPARAMETER stop "b c"\n'
        "PARAMETER temperature 0.9\nPARAMETER stop a\n",
        tmp_path,
    )
    assert p.parameters == {"stop": ["a", "b c", "a"], "temperature": 0.9}


@pytest.mark.parametrize("name", sorted(DEPRECATED_PARAMETERS))
def test_deprecated_parameters_are_dropped_with_a_warning(tmp_path: Path, name: str) -> None:
    p = plan(f"FROM llama3\nPARAMETER {name} 1\n", tmp_path)
    assert p.parameters == {}
    assert p.warnings == (f"line 2: parameter {name} is deprecated and ignored (as in Ollama)",)


# --- the other instructions ------------------------------------------------------------------------


def test_instructions_in_the_plan(tmp_path: Path) -> None:
    p = plan(
        "FROM llama3\n"
        "TEMPLATE first\nTEMPLATE {{ .Prompt }}\n"
        "SYSTEM first\nSYSTEM You are terse.\n"
        'LICENSE MIT\nLICENSE """Apache\nLicense"""\n'
        "MESSAGE user Hi\nMESSAGE assistant Hello!\n"
        "RENDERER r1\nRENDERER r2\nPARSER p1\n"
        "REQUIRES v0.6.1\n"
        'LABEL a=1 b="two words"\nLABEL a=3 org.opencontainers.image.source=https://x/y\n'
        'VERIFY min_agreement=0.9 prompt="The capital of France is"\nVERIFY max_perplexity_ratio=1.25\n',
        tmp_path,
    )
    assert p.template == "{{ .Prompt }}" and p.system == "You are terse."
    assert p.licenses == ("MIT", "Apache\nLicense")
    assert p.messages == (Message(role="user", content="Hi"), Message(role="assistant", content="Hello!"))
    assert (p.renderer, p.parser, p.requires) == ("r2", "p1", "0.6.1")
    assert p.labels == {"a": "3", "b": "two words", "org.opencontainers.image.source": "https://x/y"}
    assert (p.verify.min_agreement, p.verify.max_perplexity_ratio, p.verify.prompt) == (
        0.9,
        1.25,
        "The capital of France is",
    )
    assert p.task == "chat" and p.task_inferred  # a TEMPLATE makes it a chat model
    assert p.warnings == (
        "line 11: RENDERER is ignored (ff renders prompts with TEMPLATE or the model's own chat template)",
        "line 12: RENDERER is ignored (ff renders prompts with TEMPLATE or the model's own chat template)",
        "line 13: PARSER is ignored (ff does not parse tool calls or thinking out of the output by a named "
        "parser)",
        "line 14: REQUIRES is ignored (ff does not check the version)",
    )


def test_instructions_ff_does_not_act_on_are_named_in_warnings(tmp_path: Path) -> None:
    p = plan("FROM llama3\ndraft llama3.2:1b\nPARAMETER temperature 0.5\nRequires 0.6.0\n", tmp_path)
    assert p.warnings == (
        "line 2: DRAFT is ignored (ff does no speculative decoding: the draft model is neither built nor "
        "served)",
        "line 4: REQUIRES is ignored (ff does not check the version)",
    )
    assert not plan("FROM llama3\nPARAMETER temperature 0.5\nSYSTEM hi\n", tmp_path).warnings


# (body after "FROM llama3", message, (line, column))
BAD_INSTRUCTIONS: list[tuple[str, str, tuple[int, int]]] = [
    ("REQUIRES latest", 'REQUIRES "latest" is not a version', (2, 10)),
    ("REQUIRES 1.2.3.4", "is not a version", (2, 10)),
    ("REQUIRES 01.2", "is not a version", (2, 10)),
    ("LABEL novalue", 'LABEL takes key=value, not "novalue"', (2, 7)),
    ("LABEL ok=1 =x", 'invalid label key ""', (2, 12)),
    ("LABEL a=1 bad@key=x", 'invalid label key "bad@key"', (2, 11)),
    ("VERIFY min_agreement=1.5", "VERIFY min_agreement=1.5 is outside 0..1", (2, 8)),
    ("VERIFY min_agreement=-0.1", "is outside 0..1", (2, 8)),
    ("VERIFY max_perplexity_ratio=0.9", "is below 1", (2, 8)),
    ("VERIFY min_agreement=high", "VERIFY min_agreement: 'high' is not a number", (2, 8)),
    ("VERIFY min_agrement=0.5", 'unknown VERIFY key "min_agrement"', (2, 8)),
    ("VERIFY prompt=", "VERIFY prompt is empty", (2, 8)),
    ("VERIFY min_agreement=0.5 min_agreement=0.6", "VERIFY min_agreement is given twice", (2, 26)),
    ("VERIFY strict", 'VERIFY takes key=value, not "strict"', (2, 8)),
]


@pytest.mark.parametrize(("body", "message", "where"), BAD_INSTRUCTIONS)
def test_bad_instructions(tmp_path: Path, body: str, message: str, where: tuple[int, int]) -> None:
    err = plan_error(f"FROM llama3\n{body}\n", tmp_path)
    assert message in err.message and (err.line, err.column) == where, str(err)


def test_verify_hint(tmp_path: Path) -> None:
    assert (
        plan_error("FROM llama3\nVERIFY min_agrement=0.5\n", tmp_path).hint == "did you mean min_agreement?"
    )


# --- ARG -------------------------------------------------------------------------------------------


def test_args_defaults_overrides_and_text(tmp_path: Path) -> None:
    text = (
        "ARG REPO=HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "ARG SOURCE=hf://${REPO}\n"
        "ARG QUANT=q8_0\nARG UNUSED\n"
        "FROM ${SOURCE}\nQUANTIZE ${QUANT} f16\nPARAMETER num_ctx ${CTX}\nARG CTX=1024\n"
        'LABEL source="${SOURCE}"\nSYSTEM Keep ${SOURCE} as written\n'
    )
    p = plan(text, tmp_path)
    assert p.source.repo == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert [v.name for v in p.variants] == ["q8_0-cpu", "f16-cpu"]
    assert p.parameters == {"num_ctx": 1024}
    assert p.labels == {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert p.system == "Keep ${SOURCE} as written"  # TEMPLATE/SYSTEM/MESSAGE/LICENSE are not substituted
    assert p.build_args == {
        "REPO": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "SOURCE": "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
        "QUANT": "q8_0",
        "CTX": "1024",
    }
    assert p.text == (
        "ARG REPO=HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "ARG SOURCE=hf://HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "ARG QUANT=q8_0\nARG UNUSED\n"
        "FROM hf://HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "QUANTIZE q8_0 f16\nPARAMETER num_ctx 1024\nARG CTX=1024\n"
        'LABEL source="hf://HuggingFaceTB/SmolLM2-135M-Instruct"\nSYSTEM Keep ${SOURCE} as written\n'
    )
    assert parse(p.text).instructions[4].args == ("hf://HuggingFaceTB/SmolLM2-135M-Instruct",)

    p = plan(text, tmp_path, build_args={"SOURCE": "llama3:8b", "QUANT": "q4_k_m", "UNUSED": "set"})
    assert p.source.reference == "llama3:8b"
    assert [v.name for v in p.variants] == ["q4_k_m-cpu", "f16-cpu"]
    assert p.build_args["UNUSED"] == "set" and "FROM llama3:8b\n" in p.text


# (text, message, (line, column) or None)
BAD_ARGS: list[tuple[str, str, tuple[int, int] | None]] = [
    ("FROM ${SOURCE}\n", "${SOURCE}: no ARG SOURCE is declared", (1, 6)),
    ("ARG SOURCE\nFROM x/${SOURCE}\n", "${SOURCE}: ARG SOURCE has no value", (2, 8)),
    ("ARG A=${B}\nARG B=1\nFROM x\n", "${B}: no ARG B is declared above", (1, 7)),
    ("ARG A=1\nARG A=2\nFROM x\n", "ARG A is declared twice", (2, 5)),
    ("ARG 1A=1\nFROM x\n", 'invalid ARG name "1A"', (1, 5)),
    ("ARG A-B\nFROM x\n", 'invalid ARG name "A-B"', (1, 5)),
    ("FROM x\nTASK ${T}\nARG T=chat\n", "", None),  # declared anywhere is fine
    ("ARG SOURCE=x\nFROM llama3\n", "--build-arg SOURCES: the Modelfile declares no ARG SOURCES", None),
]


@pytest.mark.parametrize(("text", "message", "where"), BAD_ARGS)
def test_bad_args(tmp_path: Path, text: str, message: str, where: tuple[int, int] | None) -> None:
    kw = {"build_args": {"SOURCES": "y"}} if "SOURCES" in message else {}
    if not message:
        assert plan(text, tmp_path).task == "chat"
        return
    err = plan_error(text, tmp_path, **kw)
    assert message in err.message and ((err.line, err.column) if err.line else None) == where, str(err)


def test_arg_hints(tmp_path: Path) -> None:
    err = plan_error("ARG SOURCE=x\nFROM llama3\n", tmp_path, build_args={"SORCE": "y"})
    assert err.hint == "did you mean SOURCE?"
    err = plan_error("ARG SOURCE\nFROM ${SOURCE}\n", tmp_path)
    assert err.hint == "give it a default (ARG SOURCE=…) or pass --build-arg SOURCE=…"
    err = plan_error("ARG SOURCE=a\nFROM ${SOURSE}\n", tmp_path)
    assert err.hint == "did you mean SOURCE?"


TEXT_WITH_ARGS = 'ARG S\nARG T=[${S}]\nFROM llama3\nPARAMETER stop ${S}\nLABEL k="${S}" t=${T}\n'


@pytest.mark.parametrize(
    ("text", "value", "where"),
    [
        ("ARG S\nFROM llama3\nPARAMETER stop ${S}\n", "a\nADAPTER /etc/passwd", (3, 11)),  # one more
        ("ARG S\nFROM llama3\nPARAMETER stop ${S}\n", "\rSYSTEM x", (3, 11)),
        ('ARG S\nFROM llama3\nLABEL k="${S}"\n', 'x"y', (3, 7)),  # breaks the quoting
        (TEXT_WITH_ARGS, "two words", (2, 5)),  # ARG T=[${S}] would read as two words
    ],
)
def test_build_args_cannot_change_what_the_stored_text_means(
    tmp_path: Path, text: str, value: str, where: tuple[int, int]
) -> None:
    err = plan_error(text, tmp_path, build_args={"S": value})
    assert err.message == "with these ARG values the Modelfile's text reads differently here"
    assert (err.line, err.column) == where and len(err.errors) == 1


def test_build_args_that_keep_the_meaning(tmp_path: Path) -> None:
    p = plan(TEXT_WITH_ARGS, tmp_path, build_args={"S": "</s>"})
    assert p.labels == {"k": "</s>", "t": "[</s>]"}
    assert [(i.keyword, i.args) for i in parse(p.text).instructions][1:] == [
        ("ARG", ("T", "[</s>]")),
        ("FROM", ("llama3",)),
        ("PARAMETER", ("stop", "</s>")),
        ("LABEL", ("k=</s>", "t=[</s>]")),
    ]
    quoted = 'ARG S\nFROM llama3\nLABEL k="${S}"\nSYSTEM ${S} stays as written: "\n'
    assert plan(quoted, tmp_path, build_args={"S": "a b\tc"}).labels == {"k": "a b\tc"}


def test_dollar_text_that_is_no_reference_is_kept(tmp_path: Path) -> None:
    p = plan("FROM llama3\nPARAMETER stop $x ${ ${1} $${}\n", tmp_path)
    assert p.parameters["stop"] == ["$x ${ ${1} $${}"]


# --- errors, files, JSON ---------------------------------------------------------------------------


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    err = plan_error(
        "FROM ./missing.gguf\nPARAMETER temprature 1\nQUANTIZE q9\nTASK chatt\nLABEL x\nFROM llama3\n",
        tmp_path,
    )
    assert [(e.line, e.column) for e in err.errors] == [(1, 6), (2, 11), (3, 10), (4, 6), (5, 7), (6, 6)]
    text = str(err)
    assert (
        text.count("Modelfile:") == 6 and "did you mean temperature?" in text and "did you mean chat?" in text
    )


def test_plan_file_reads_a_folder_and_records_paths(tmp_path: Path) -> None:
    (tmp_path / "Modelfile").write_text("FROM llama3\n")
    p = plan_file(tmp_path)
    assert p.modelfile == tmp_path.resolve() / "Modelfile" and p.context == tmp_path.resolve()
    assert p.text == "FROM llama3\n"


def test_the_plan_is_json(tmp_path: Path, minilm_folder: Path) -> None:
    (tmp_path / "hf").symlink_to(minilm_folder)
    p = plan(
        "FROM ./hf\nQUANTIZE f16 int8\nTARGET cpu\nPARAMETER stop a\nPARAMETER use_mmap false\n"
        "PARAMETER temperature 0.5\nPARAMETER seed 3\n",
        tmp_path,
    )
    again = BuildPlan.model_validate_json(p.model_dump_json())
    assert again == p
    assert again.parameters == {"stop": ["a"], "use_mmap": False, "temperature": 0.5, "seed": 3}
