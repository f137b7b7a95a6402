"""The planner's FROM / DRAFT / ADAPTER resolution and task inference, on real files: the SmolLM2
GGUF, the MiniLM Hugging Face folder and the example PEFT LoRA in modelfiles/smollm2-adapter."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from ffbuild.errors import ModelfileError, ModelfilePlanError
from ffbuild.plan import BuildPlan, SourceKind
from ffbuild.planner import plan_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_LORA = REPO / "modelfiles" / "smollm2-adapter" / "lora"


def plan(folder: Path, text: str, **kw: object) -> BuildPlan:
    (folder / "Modelfile").write_text(text, encoding="utf-8")
    return plan_file(folder / "Modelfile", **kw)  # type: ignore[arg-type]


def plan_error(folder: Path, text: str, **kw: object) -> ModelfileError:
    with pytest.raises(ModelfileError) as info:
        plan(folder, text, **kw)
    return info.value


@pytest.fixture
def models(tmp_path: Path, smollm2_gguf: Path, minilm_folder: Path) -> Path:
    """A folder with links to the real models and a few other source files."""
    (tmp_path / "smollm2.gguf").symlink_to(smollm2_gguf)
    (tmp_path / "minilm").symlink_to(minilm_folder)
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")  # planning does not read ONNX files
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "fake.gguf").write_bytes(b"GGML" + bytes(60))
    (tmp_path / "empty-folder").mkdir()
    weights = tmp_path / "weights"
    weights.mkdir()
    header = b'{"__metadata__":{}}'
    (weights / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    return tmp_path


@pytest.mark.parametrize(
    ("source", "kind", "detail"),
    [
        ("./smollm2.gguf", SourceKind.GGUF_FILE, "smollm2.gguf"),
        ("smollm2.gguf", SourceKind.GGUF_FILE, "smollm2.gguf"),
        ("minilm", SourceKind.HF_FOLDER, "minilm"),
        ("./minilm/", SourceKind.HF_FOLDER, "minilm"),
        ("model.onnx", SourceKind.ONNX_FILE, "model.onnx"),
        (
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
            SourceKind.HF_REPO,
            "HuggingFaceTB/SmolLM2-135M-Instruct@None",
        ),
        ("hf://org/repo@v1.0", SourceKind.HF_REPO, "org/repo@v1.0"),
        ("hf://org/repo@refs/pr/1", SourceKind.HF_REPO, "org/repo@refs/pr/1"),
        ("llama3", SourceKind.OCI, "llama3:latest"),
        ("llama3:7b-instruct-q4_K_M", SourceKind.OCI, "llama3:7b-instruct-q4_K_M"),
        (
            "registry.example.com:5000/team/model:v2",
            SourceKind.OCI,
            "registry.example.com:5000/team/model:v2",
        ),
        ("localhost/model", SourceKind.OCI, "localhost/model:latest"),
    ],
)
def test_sources(models: Path, source: str, kind: SourceKind, detail: str) -> None:
    p = plan(models, f"FROM {source}\nTASK generate\n")
    assert p.source.kind == kind and p.source.raw == source
    if kind in (SourceKind.GGUF_FILE, SourceKind.HF_FOLDER, SourceKind.ONNX_FILE):
        assert p.source.path == models / detail  # relative to the Modelfile's folder, absolute
    elif kind == SourceKind.HF_REPO:
        assert f"{p.source.repo}@{p.source.revision}" == detail
    else:
        assert p.source.reference == detail


def test_sources_resolve_against_the_modelfile_folder_not_the_cwd(
    models: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert plan(models, "FROM ./minilm\n").source.path == models / "minilm"


def test_home_is_expanded(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(models))
    assert plan(models, "FROM ~/smollm2.gguf\n").source.path == models / "smollm2.gguf"


def test_safetensors_file_needs_its_config(models: Path) -> None:
    err = plan_error(models, "FROM weights/model.safetensors\n")
    assert "needs its config.json beside it" in err.message
    (models / "weights" / "config.json").write_text("{}")
    assert plan(models, "FROM weights/model.safetensors\n").source.kind == SourceKind.SAFETENSORS_FILE
    (models / "weights" / "model.safetensors").write_bytes(b"\xff" * 16)
    assert "not a safetensors file" in plan_error(models, "FROM weights/model.safetensors\n").message


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("./missing.gguf", "missing.gguf: no such file or folder"),
        ("missing.safetensors", "no such file or folder"),
        ("./nowhere/", "no such file or folder"),
        ("notes.txt", "unrecognised kind of file"),
        ("fake.gguf", "not a GGUF file"),
        ("empty-folder", "not a Hugging Face model folder"),
        ("hf://just-a-name", "not a Hugging Face repository id"),
        ("hf://org/repo--x", "not a Hugging Face repository id"),
        ("hf://-org/repo", "not a Hugging Face repository id"),
        ("hf://org/repo@", "not a revision"),
        ("hf://org/repo@../x", "not a revision"),
        ("Not A Reference!", "not an existing path, an hf:// repository or a model reference"),
        ("UPPER/case:tag", "not an existing path"),
    ],
)
def test_bad_sources(models: Path, source: str, message: str) -> None:
    err = plan_error(models, f"# a comment\nFROM {source}\n", build_args=None)
    assert isinstance(err, ModelfilePlanError)
    assert message in err.message
    assert (err.line, err.column) == (2, 6)  # at the source, on its line
    assert err.line_text == f"FROM {source}"


def test_folder_without_config_names_the_files_inside(models: Path, smollm2_gguf: Path) -> None:
    (models / "empty-folder" / "model.gguf").symlink_to(smollm2_gguf)
    assert plan_error(models, "FROM empty-folder\n").hint == "name a file inside it instead: model.gguf"


def test_one_from_only(models: Path) -> None:
    err = plan_error(models, "FROM llama3\nFROM ./smollm2.gguf\n")
    assert "more than one FROM (the first is on line 1)" in err.message and err.line == 2


def test_draft(models: Path) -> None:
    p = plan(models, "FROM ./minilm\nDRAFT ./smollm2.gguf\n")
    assert p.draft is not None and p.draft.kind == SourceKind.GGUF_FILE
    err = plan_error(models, "FROM smollm2.gguf\nDRAFT ./smollm2.gguf\n")
    assert "same local path as FROM" in err.message and (err.line, err.column) == (2, 7)
    err = plan_error(models, "FROM llama3\nDRAFT a\nDRAFT b\n")
    assert "more than one DRAFT (the first is on line 2)" in err.message and err.line == 3


# --- adapters -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gguf_lora(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> Path:
    """The example PEFT LoRA converted to a GGUF LoRA by the build's own adapter stage."""
    from ffbuild.stages.lora import convert_peft_lora

    out = tmp_path_factory.mktemp("lora") / "lora.gguf"
    convert_peft_lora(EXAMPLE_LORA, out, base=smollm2_hf)
    return out


def test_adapters(models: Path, gguf_lora: Path) -> None:
    shutil.copytree(EXAMPLE_LORA, models / "peft")
    (models / "lora.gguf").symlink_to(gguf_lora)
    p = plan(models, "FROM smollm2.gguf\nADAPTER ./peft\nADAPTER lora.gguf\n")
    assert [(a.kind, a.path.name, a.raw) for a in p.adapters] == [
        ("peft", "peft", "./peft"),
        ("gguf", "lora.gguf", "lora.gguf"),
    ]


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        ("./missing", "no such file or folder"),
        ("empty-folder", "not a PEFT adapter folder (no adapter_config.json)"),
        ("minilm", "not a PEFT adapter folder"),
        ("notes.txt", "must be a GGUF LoRA"),
        ("fake.gguf", "must be a GGUF LoRA"),
        ("smollm2.gguf", "this GGUF is a model, not a LoRA adapter"),
    ],
)
def test_bad_adapters(models: Path, adapter: str, message: str) -> None:
    err = plan_error(models, f"FROM llama3\nADAPTER {adapter}\n")
    assert message in err.message and (err.line, err.column) == (2, 9)


def test_peft_folder_without_weights(models: Path) -> None:
    (models / "peft").mkdir()
    (models / "peft" / "adapter_config.json").write_text("{}")
    assert "has no adapter_model" in plan_error(models, "FROM llama3\nADAPTER peft\n").message


def test_a_lora_is_not_a_base_model(models: Path, gguf_lora: Path) -> None:
    (models / "lora.gguf").symlink_to(gguf_lora)
    err = plan_error(models, "FROM lora.gguf\n")
    assert "LoRA adapter, not a model" in err.message and err.hint == "name it with ADAPTER"


# --- task inference -------------------------------------------------------------------------------


def _hf_folder(root: Path, name: str, config: dict[str, object], **files: str) -> None:
    folder = root / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for file, content in files.items():
        (folder / file.replace("__", ".")).write_text(content)


@pytest.mark.parametrize(
    ("modelfile", "task", "inferred"),
    [
        ("FROM smollm2.gguf", "chat", True),  # the GGUF carries a chat template
        ("FROM minilm", "embed", True),  # a sentence-transformers BERT folder
        ("FROM model.onnx", "tensor", True),
        ("FROM causal", "generate", True),
        ("FROM causal\nTEMPLATE {{ .Prompt }}", "chat", True),
        ("FROM chat", "chat", True),
        ("FROM chat-jinja", "chat", True),
        ("FROM classifier", "classify", True),
        ("FROM encoder", "embed", True),
        ("FROM llama3", "generate", True),  # a store model: the build refines it from the artifact
        ("FROM smollm2.gguf\nTASK generate", "generate", False),
        ("FROM minilm\ntask Classify", "classify", False),
    ],
)
def test_task(models: Path, modelfile: str, task: str, inferred: bool) -> None:
    _hf_folder(models, "causal", {"architectures": ["LlamaForCausalLM"], "model_type": "llama"})
    _hf_folder(
        models,
        "chat",
        {"architectures": ["Qwen2ForCausalLM"]},
        tokenizer_config__json='{"chat_template": "x"}',
    )
    _hf_folder(models, "chat-jinja", {"architectures": ["LlamaForCausalLM"]}, chat_template__jinja="{{ x }}")
    _hf_folder(
        models, "classifier", {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    )
    _hf_folder(models, "encoder", {"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"})
    p = plan(models, modelfile + "\n")
    assert (p.task, p.task_inferred) == (task, inferred)


def test_task_of_an_uncached_hf_repo_is_generate_with_a_warning(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(models / "no-cache"))
    p = plan(models, "FROM hf://org/repo\n")
    assert p.task == "generate" and p.task_inferred
    assert any("TASK is taken as generate" in w for w in p.warnings)


def test_task_of_a_cached_hf_repo_comes_from_the_cache(
    models: Path, monkeypatch: pytest.MonkeyPatch, minilm_folder: Path
) -> None:
    cache = models / "hub"
    repo = cache / "models--sentence-transformers--all-MiniLM-L6-v2"
    commit = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    (repo / "snapshots" / commit).symlink_to(minilm_folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    p = plan(models, "FROM hf://sentence-transformers/all-MiniLM-L6-v2\n")
    assert p.task == "embed" and not p.warnings
    assert plan(models, f"FROM hf://sentence-transformers/all-MiniLM-L6-v2@{commit}\n").task == "embed"


def test_task_errors(models: Path) -> None:
    err = plan_error(models, "FROM llama3\nTASK embeding\n")
    assert err.message == 'unknown task "embeding"' and err.hint == "did you mean embed?"
    assert (err.line, err.column) == (2, 6)
    assert "more than one TASK" in plan_error(models, "FROM llama3\nTASK chat\nTASK embed\n").message
    err = plan_error(models, "FROM smollm2.gguf\nTASK tensor\n")
    assert "TASK tensor needs an ONNX-family backend" in err.message and (err.line, err.column) == (2, 6)


@pytest.mark.parametrize("source", ["a" * 5000, "./" + "b" * 300 + ".gguf", "/" + "x/" * 3000])
def test_paths_the_filesystem_refuses(models: Path, source: str) -> None:
    err = plan_error(models, f"FROM {source}\nADAPTER {source}\nDRAFT {source}\n")
    assert [(e.line, e.column) for e in err.errors] == [(1, 6), (2, 9), (3, 7)]
    assert all(e.message.endswith("File name too long") and len(e.message) < 120 for e in err.errors)


def test_hostile_build_args_cannot_drive_the_terminal(models: Path) -> None:
    err = plan_error(models, "ARG S\nFROM ${S}\n", build_args={"S": "./\x1b[31mred.gguf"})
    assert "\x1b" not in str(err) and "\\x1b[31mred.gguf: no such file or folder" in str(err)
