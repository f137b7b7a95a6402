"""/api/push, /api/pull and pull-on-demand (FF_PULL=1) against a real registry (Debian docker-registry)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.ffserve.serve_testkit import ROOT, Server, start_server

sys.path.insert(0, str(ROOT / "tests" / "registry"))
from remote_testkit import RegistryServer, ollama_manifest, push_raw, start_registry, stop_registry

from registry.oci import DOCKER_MANIFEST, OLLAMA_PARAMS, OLLAMA_TEMPLATE

pytestmark = pytest.mark.registry
# The bare question leaves SmolLM2 q8_0 0.04-0.16 logits between "The" and "L" (the start of
# "L'Étoile, ..."), which kernel paths (AVX2 vs AVX-512, a batch vs one token) tip either way; asked
# for one sentence, "The" leads by 1.6 on every path.
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("ffserve-registry"), None)
    yield server
    stop_registry(server)


def _ndjson(r: httpx.Response) -> list[dict[str, object]]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def test_push_then_pull_through_the_api(server: Server, registry: RegistryServer) -> None:
    remote = f"{registry.host}/ff/smollm2:v1"
    oc = ollama.Client(host=server.url)
    oc.copy("smollm2", remote)
    pushed = httpx.post(server.url + "/api/push", json={"model": remote, "insecure": True}, timeout=300)
    events = _ndjson(pushed)
    assert pushed.status_code == 200 and events[-1] == {"status": "success"}, events[-3:]
    assert any("digest" in e and e.get("total") for e in events)
    oc.delete(remote)
    assert remote not in {m.model for m in oc.list().models}

    progress = list(oc.pull(remote, insecure=True, stream=True))
    assert progress[-1].status == "success"
    assert any(p.digest and p.total for p in progress)
    r = oc.chat(model=remote, messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in r.message.content

    missing = httpx.post(server.url + "/api/pull", json={"model": f"{registry.host}/ff/nothing:v1",
                                                         "insecure": True, "stream": False}, timeout=60)
    assert missing.status_code >= 400 and "nothing" in missing.json()["error"]


def test_pull_on_demand(ff_home: Path, registry: RegistryServer, tmp_path: Path) -> None:
    remote = f"{registry.host}/ff/smollm2:v1"  # pushed by the test above
    empty = tmp_path / "home"
    empty.mkdir()
    with start_server(empty, tmp_path, FF_PULL="1", FF_REGISTRY_INSECURE="1") as s:
        listing = httpx.get(f"http://{registry.host}/v2/ff/smollm2/tags/list").json()
        assert "v1" in listing["tags"]
        r = httpx.post(s.url + "/api/chat", timeout=300, json={
            "model": remote, "stream": False, "messages": [{"role": "user", "content": QUESTION}]})
        assert r.status_code == 200, r.text
        assert "Paris" in r.json()["message"]["content"]
        assert remote in {m["name"] for m in httpx.get(s.url + "/api/tags").json()["models"]}


def test_pulled_ollama_model_is_served(server: Server, registry: RegistryServer, smollm2_gguf: Path) -> None:
    """An Ollama-format manifest (Docker v2, vnd.ollama layers) pulled through /api/pull answers chats."""
    template = b"<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
    params = json.dumps({"stop": ["<|im_end|>"], "temperature": 0}).encode()
    manifest, blobs = ollama_manifest(
        smollm2_gguf.read_bytes(), [(template, OLLAMA_TEMPLATE), (params, OLLAMA_PARAMS)]
    )
    push_raw(registry.host, "library/smol", "q4", blobs, manifest, DOCKER_MANIFEST)
    ref = f"{registry.host}/library/smol:q4"
    oc = ollama.Client(host=server.url)
    assert list(oc.pull(ref, insecure=True, stream=True))[-1].status == "success"
    r = oc.generate(model=ref, prompt=QUESTION)
    assert "Paris" in r.response and r.done_reason == "stop", r.response
