"""Fixtures for the server tests: real models in a real store, and a real ``ff serve`` subprocess.

``smollm2:latest`` is what ``ff build`` makes of the SmolLM2 Hugging Face folder (the shared
``smollm2_hf`` fixture): q8_0 and q4_k_m variants, as a user would build it. Most tests share one server
(session scope); tests that need other settings start their own with :func:`start_server`.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import Server, ff_build, start_server
from tests.models import add_model


def build_smollm2(home: Path, smollm2_hf: Path) -> None:
    """``ff build`` SmolLM2 from its Hugging Face folder into ``home``: q8_0 and q4_k_m variants, greedy."""
    modelfile = (
        f"FROM {smollm2_hf}\nQUANTIZE q8_0 q4_k_m\nTASK chat\n"
        "PARAMETER temperature 0\nPARAMETER stop <|im_end|>\n"
    )
    ff_build(home, modelfile, "smollm2:latest")


@pytest.fixture(scope="session")
def ff_home(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, smollm2_hf: Path) -> Path:
    """FF_HOME with ``smollm2:latest`` built by ``ff build`` from the HF folder (q8_0 + q4_k_m variants,
    greedy by default) and ``tiny:latest`` (the shipped Q4_1 with a Go TEMPLATE and SYSTEM prompt)."""
    home = tmp_path_factory.mktemp("ffhome")
    build_smollm2(home, smollm2_hf)
    store = Store(home / "store")
    add_model(
        store,
        "tiny:latest",
        {"q4_1": smollm2_gguf},
        params={"temperature": 0.0, "num_predict": 24},
        template="<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
        "<|im_start|>assistant\n",
        system="You always answer in French.",
    )
    return home


@pytest.fixture(scope="session")
def smollm2_lora_gguf(smollm2_lora: Path, smollm2_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PEFT LoRA as a GGUF adapter (llama.cpp's convert_lora_to_gguf.py against the HF folder): a GGUF
    base takes GGUF adapters; a PEFT folder needs the base's Hugging Face folder to convert against."""
    from ffbuild.stages.lora import convert_peft_lora

    out = tmp_path_factory.mktemp("lora") / "adapter.gguf"
    convert_peft_lora(smollm2_lora, out, base=smollm2_hf)
    return out


@pytest.fixture(scope="session")
def server(ff_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(ff_home, tmp_path_factory.mktemp("logs"), FF_MAX_QUEUE="4") as s:
        yield s


@pytest.fixture(scope="session")
def curl() -> str:
    exe = shutil.which("curl")
    if exe is None:
        pytest.fail("curl is not installed (apt-get install curl)")
    return exe


@pytest.fixture(scope="module")
def oc(server: Server) -> ollama.Client:
    """The unmodified ollama client on the module's ``server`` (a module may start its own)."""
    return ollama.Client(host=server.url)


@pytest.fixture(scope="module")
def ai(server: Server) -> openai.OpenAI:
    """The unmodified openai client on the module's ``server``."""
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
