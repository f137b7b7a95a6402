"""``ff pull`` of a tag holding a GGUF and an ONNX Runtime GenAI variant (modelfiles/smollm2-multi)
from a real registry: the variant is chosen by installed backends, ``--backend`` narrows."""

from __future__ import annotations

from pathlib import Path

import pytest
from remote_testkit import RegistryServer

from registry.remote import pull, push
from registry.select import HostInfo, SelectionError
from registry.store import Store
from tests.genai_home import TAG, build_multi, ff

pytestmark = pytest.mark.registry

CPU, NONE, GENAI = frozenset({"cpu"}), frozenset[str](), frozenset({"onnxruntime"})
BOTH = HostInfo(CPU, NONE, frozenset({"llamacpp", "onnxruntime"}), generators=GENAI)
ORT_ONLY = HostInfo(CPU, NONE, frozenset({"onnxruntime"}), generators=GENAI)
NO_GENAI = HostInfo(CPU, NONE, frozenset({"llamacpp", "onnxruntime"}))


@pytest.fixture(scope="module")
def remote(
    registry_server: RegistryServer, tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path
) -> str:
    home = tmp_path_factory.mktemp("genai-push")
    build_multi(home, smollm2_hf)
    ref = f"{registry_server.host}/ff/smollm2-multi:1"
    push(TAG, store=Store(home / "store"), remote_ref=ref)
    return ref


def test_pull_chooses_by_installed_backends(remote: str, tmp_path: Path) -> None:
    assert pull(remote, store=Store(tmp_path / "a"), host=BOTH).variants == ["q4_0-cpu"]
    assert pull(remote, store=Store(tmp_path / "b"), host=ORT_ONLY).variants == ["int4-cpu"]
    narrowed = pull(remote, store=Store(tmp_path / "c"), host=BOTH, backend="onnxruntime")
    assert narrowed.variants == ["int4-cpu"]
    with pytest.raises(SelectionError, match="no variant fits"):
        pull(remote, store=Store(tmp_path / "d"), host=NO_GENAI, backend="onnxruntime")


def test_cli_pull_backend(remote: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = ff(home, "pull", remote, "--backend", "onnxruntime").stdout
    assert "int4-cpu" in out and "q4_0-cpu" not in out.split("variants", 1)[1].split(";", 1)[0]
    # the pulled tag lists both variants, only int4 is present: ff run (and ff serve) choose among those
    answer = ff(home, "run", remote, "What is the capital of France?").stdout
    assert "Paris" in answer
