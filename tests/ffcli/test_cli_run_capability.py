"""``ff run`` through a server picks ``/api/chat`` or ``/api/generate`` by the model's ``chat`` capability
(``/api/show``), never by an error's text; ``/api/show`` says ``chat`` exactly when the runtime chats."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import ROOT, Server, start_server
from tests.models import add_model

TEMPLATE = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("capability")
    plain = home / "plain.gguf"  # the same model without its chat template: it can only complete
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--remove-metadata",
         "tokenizer.chat_template", "--force", str(smollm2_gguf), str(plain)],
        check=True, capture_output=True, timeout=300,
    )
    store = Store(home / "store")
    params: dict[str, object] = {"temperature": 0.0}
    add_model(store, "plain:latest", {"q4_1": plain}, params=params, task="generate")
    add_model(store, "own:latest", {"q4_1": smollm2_gguf}, params=params)  # the GGUF's own chat template
    add_model(store, "templated:latest", {"q4_1": plain}, params=params, template=TEMPLATE)
    with start_server(home, tmp_path_factory.mktemp("capability-logs")) as s:
        yield s


@pytest.mark.parametrize(
    ("model", "capabilities"),
    [
        ("plain", ["completion", "embedding"]),
        ("own", ["completion", "chat", "embedding"]),
        ("templated", ["completion", "chat", "embedding"]),
    ],
)
def test_show_says_chat_when_the_model_has_a_chat_template(
    server: Server, model: str, capabilities: list[str]
) -> None:
    shown = httpx.post(server.url + "/api/show", json={"model": model}, timeout=60).json()
    assert shown["capabilities"] == capabilities


@pytest.mark.parametrize(("model", "route"), [("plain", "/api/generate"), ("own", "/api/chat")])
def test_run_through_the_server_asks_by_capability(
    server: Server, tmp_path: Path, model: str, route: str
) -> None:
    env = {**os.environ, "FF_HOME": str(tmp_path / "empty"), "FF_HOST": server.url, "PYTHONPATH": str(ROOT)}
    before = server.log.read_text(errors="replace")
    proc = subprocess.run(
        [sys.executable, "-m", "ffcli", "run", model, "Once upon a time", "--max-tokens", "4"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    asked = server.log.read_text(errors="replace")[len(before):]
    assert f'"POST {route}" 200' in asked, asked
    other = "/api/chat" if route == "/api/generate" else "/api/generate"
    assert f'"POST {other}"' not in asked, asked  # no failed try first
