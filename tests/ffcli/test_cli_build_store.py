"""``ff list / show / tag / rm / prune`` on a real store holding the SmolLM2 GGUF as a model."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ffbuild.cache import file_digest
from ffbuild.plan import Variant
from ffbuild.stages.context import WeightFile
from ffbuild.stages.package import ModelMeta, VariantPayload, package_model
from ffcli.store import list_command, prune_command, rm_command, show_command, tag_command
from registry.reference import parse_reference
from registry.store import Store


@pytest.fixture
def home(tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FF_HOME", str(tmp_path / "ff"))
    store = Store()
    big = WeightFile(smollm2_gguf, file_digest(smollm2_gguf), smollm2_gguf.stat().st_size)
    small_path = tmp_path / "small.gguf"
    small_path.write_bytes(smollm2_gguf.read_bytes()[: 1 << 16])
    small = WeightFile(small_path, file_digest(small_path), small_path.stat().st_size)

    def payload(q: str, w: WeightFile, agreement: float) -> VariantPayload:
        return VariantPayload(
            Variant(quantization=q, device="cpu", backend="llamacpp", family="gguf"),
            w,
            "llama",
            134_515_008,
            "int4",
            verify={"agreement": agreement, "perplexity_ratio": 2.0 - agreement, "loads": True},
        )

    meta = ModelMeta(
        name="smollm2", task="chat", system="Be brief.", parameters={"temperature": 0.0}, modelfile="FROM x\n"
    )
    package_model(
        store,
        parse_reference("smollm2:latest"),
        meta,
        [payload("q4_1", big, 0.75), payload("q2_k", small, 0.5)],
    )
    return tmp_path / "ff"


def _run(cmd: click.Command, *args: str) -> str:
    result = CliRunner().invoke(cmd, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_hides_variant_tags_unless_all(home: Path) -> None:
    out = _run(list_command)
    assert "smollm2:latest" in out and "q2_k-cpu, q4_1-cpu" in out
    assert "latest-q4_1-cpu" not in out
    assert "smollm2:latest-q4_1-cpu" in _run(list_command, "--all")


def test_show_lists_variants_with_figures(home: Path) -> None:
    out = _run(show_command, "smollm2:latest")
    assert "q4_1-cpu" in out and "0.750" in out and "0.500" in out
    doc = json.loads(_run(show_command, "smollm2:latest", "--json"))
    figures = {v["variant"]: v["agreement"] for v in doc["variants"]}
    assert figures == {"q4_1-cpu": 0.75, "q2_k-cpu": 0.5}
    assert doc["system"] == "Be brief." and doc["parameters"] == {"temperature": 0.0}
    assert doc["paramSize"] == "135M" and doc["architecture"] == "llama"
    assert _run(show_command, "smollm2:latest", "--modelfile") == "FROM x\n"


def test_tag_rm_prune(home: Path) -> None:
    assert "other:v1-q4_1-cpu" in _run(tag_command, "smollm2:latest", "other:v1")
    before = {n for n, _ in Store().tags()}
    assert {"other:v1", "other:v1-q2_k-cpu", "other:v1-q4_1-cpu"} <= before
    out = _run(rm_command, "smollm2:latest")
    assert "smollm2:latest-q2_k-cpu" in out
    assert {n for n, _ in Store().tags()} == {"other:v1", "other:v1-q2_k-cpu", "other:v1-q4_1-cpu"}
    assert "removed 0 blob(s)" in _run(prune_command)  # other:v1 still reaches every blob
    _run(rm_command, "other:v1")
    assert Store().tags() == []
    blobs = len(list(Store().blobs.iterdir()))
    assert f"removed {blobs} blob(s)" in _run(prune_command)
    assert list(Store().blobs.iterdir()) == []


def test_errors_are_messages_not_tracebacks(home: Path) -> None:
    for cmd, args in [
        (show_command, ["nothere:latest"]),
        (rm_command, ["nothere:latest"]),
        (tag_command, ["nothere:latest", "x:y"]),
        (show_command, ["Bad Name!"]),
    ]:
        result = CliRunner().invoke(cmd, args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ") and "Traceback" not in result.output
