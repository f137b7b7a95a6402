"""``/api/create``, ``/api/blobs``, copy, delete and pull as the unmodified ``ollama`` client calls them,
against a real ``ff serve`` (its own FF_HOME: the shared store linked in, so the other modules' server
never sees these models), with real SmolLM2 weights; each result answers ``chat`` at once."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from tests.ffserve.serve_testkit import ROOT, Server, start_server

sys.path.insert(0, str(ROOT / "tests" / "registry"))
from remote_testkit import RegistryServer, start_registry, stop_registry

QUESTION = "What is the capital of France? Answer in one sentence."
SYSTEM = "You are a helpful assistant. You always answer in one short sentence."
GREEDY = {"temperature": 0, "stop": ["<|im_end|>"], "num_predict": 48}
TEMPLATE = (
    "<|im_start|>system\n{{ .System }}<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
HISTORY = [
    {"role": "user", "content": "What is the capital of Italy?"},
    {"role": "assistant", "content": "The capital of Italy is Rome."},
]


@pytest.fixture(scope="module")
def home(ff_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shared FF_HOME made of hard links (blobs and cache entries are never written in
    place; index.json is replaced by rename), so creating and deleting here changes nothing there."""
    out = tmp_path_factory.mktemp("create-home")
    for part in ("store", "cache"):
        if (ff_home / part).is_dir():
            shutil.copytree(ff_home / part, out / part, copy_function=os.link, ignore=_locks)
    return out


def _locks(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "locks" or n.startswith(".tmp-")]


@pytest.fixture(scope="module")
def srv(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with start_server(home, tmp_path_factory.mktemp("create-logs")) as s:
        yield s


@pytest.fixture(scope="module")
def client(srv: Server) -> ollama.Client:
    return ollama.Client(host=srv.url, timeout=600)


@pytest.fixture(scope="module")
def smollm2_f16(smollm2_hf: Path) -> Path:
    """SmolLM2 as an f16 GGUF (what a user converts and uploads to quantize on the server)."""
    from ffbuild.stages.convert import convert_hf_to_gguf
    from tests.models import cached_dir

    key = smollm2_hf.parent.name.replace("smollm2-hf", "smollm2-f16-gguf")
    folder = cached_dir(key, "gguf", lambda d: _convert(convert_hf_to_gguf, smollm2_hf, d))
    return folder / "smollm2-f16.gguf"


def _convert(convert: object, hf: Path, dest: Path) -> None:
    convert(hf, dest / "smollm2-f16.gguf", "f16")  # type: ignore[operator]


def _names(client: ollama.Client) -> set[str]:
    return {m.model or "" for m in client.list().models}


def _chat(client: ollama.Client, model: str, system: str | None = None) -> ollama.ChatResponse:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": QUESTION}
    ]
    return client.chat(model=model, messages=msgs)


def test_create_from_a_stored_model_with_system(client: ollama.Client, srv: Server) -> None:
    events = list(client.create(model="assistant", from_="smollm2", system=SYSTEM, stream=True))
    assert events[-1].status == "success" and len(events) > 2, events
    assert "assistant:latest" in _names(client)
    shown = httpx.post(srv.url + "/api/show", json={"model": "assistant"}).json()
    assert shown["system"] == SYSTEM and "SYSTEM" in shown["modelfile"], shown["modelfile"]
    assert shown["parameters"]  # inherited from smollm2 (temperature 0, stop)
    mine = _chat(client, "assistant")
    theirs = _chat(client, "smollm2", system=SYSTEM)  # the same system prompt, sent by the client
    assert mine.message.content == theirs.message.content and "Paris" in (mine.message.content or "")
    # SmolLM2's own template puts a default system prompt in when a chat has none: not the same prompt
    assert mine.prompt_eval_count == theirs.prompt_eval_count != _chat(client, "smollm2").prompt_eval_count


def test_create_from_an_uploaded_gguf_with_quantize(
    client: ollama.Client, srv: Server, smollm2_f16: Path, smollm2_lora_gguf: Path
) -> None:
    digest = client.create_blob(smollm2_f16)
    assert httpx.head(f"{srv.url}/api/blobs/{digest}").status_code == 200
    lora = {"adapter.gguf": client.create_blob(smollm2_lora_gguf)}
    events = list(
        client.create(
            model="uploaded:q8",
            files={"smollm2-f16.gguf": digest},
            adapters=lora,  # a GGUF LoRA (uploaded as a blob)
            quantize="Q8_0",
            template=TEMPLATE,
            system="You answer questions about geography.",
            messages=HISTORY,
            parameters=GREEDY,
            license="Apache-2.0",
            stream=True,
        )
    )
    assert events[-1].status == "success" and any("q8_0" in (e.status or "") for e in events), events
    shown = client.show("uploaded:q8")
    assert shown.details and shown.details.quantization_level == "Q8_0"
    assert shown.license == "Apache-2.0" and "stop" in (shown.parameters or "")
    assert shown.template == TEMPLATE and "MESSAGE assistant" in (shown.modelfile or "")
    assert "ADAPTER adapters" in (shown.modelfile or "") and "FROM smollm2-f16.gguf" in (
        shown.modelfile or ""
    )
    assert "Paris" in (_chat(client, "uploaded:q8").message.content or "")


def test_copy_then_delete(client: ollama.Client) -> None:
    client.copy("assistant", "assistant-copy")
    assert "Paris" in (_chat(client, "assistant-copy").message.content or "")
    client.delete("assistant-copy")
    assert "assistant-copy:latest" not in _names(client) and "assistant:latest" in _names(client)
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("assistant-copy")
    assert err.value.status_code == 404


def test_concurrent_creates_of_one_name(client: ollama.Client, srv: Server) -> None:
    systems = [f"{SYSTEM} You are assistant number {i}." for i in range(3)]
    errors: list[BaseException] = []

    def create(system: str) -> None:
        try:
            assert client.create(model="racer", from_="smollm2", system=system).status == "success"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(s,)) for s in systems]
    for t in threads:
        t.start()
    assert httpx.get(srv.url + "/api/version", timeout=5).status_code == 200  # the loop is not blocked
    for t in threads:
        t.join()
    assert not errors, errors
    shown = httpx.post(srv.url + "/api/show", json={"model": "racer"}).json()
    assert shown["system"] in systems
    assert "Paris" in (_chat(client, "racer").message.content or "")


def test_create_errors(client: ollama.Client, srv: Server, smollm2_gguf: Path) -> None:
    def status(call: object) -> int:
        with pytest.raises(ollama.ResponseError) as err:
            call()  # type: ignore[operator]
        return err.value.status_code

    assert status(lambda: client.create(model="x", from_="no-such-model")) == 404
    missing = "sha256:" + "0" * 64
    assert status(lambda: client.create(model="x", files={"m.gguf": missing})) == 400
    assert status(lambda: client.create(model="x", from_="smollm2", quantize="q9_9")) == 400
    assert status(lambda: client.create(model="x")) == 400
    assert httpx.head(f"{srv.url}/api/blobs/{missing}").status_code == 404
    bad = httpx.post(f"{srv.url}/api/blobs/{missing}", content=b"not those bytes")
    assert bad.status_code == 400 and "digest" in bad.json()["error"]
    assert httpx.post(f"{srv.url}/api/blobs/sha256:nothex", content=b"").status_code == 400
    # Ollama's rule: only an f16/f32 model is quantized (the Q4_1 upload is refused, with the reason)
    q4 = client.create_blob(smollm2_gguf)
    streamed = httpx.post(
        srv.url + "/api/create",
        timeout=120,
        json={"model": "x", "files": {"m.gguf": q4}, "quantize": "q8_0", "stream": False},
    )
    assert streamed.status_code == 400 and "already quantized" in streamed.json()["error"]
    assert "x:latest" not in _names(client)


@pytest.mark.registry
def test_pull_progress_then_chat(client: ollama.Client, tmp_path: Path) -> None:
    registry: RegistryServer = start_registry(tmp_path / "registry", None)
    try:
        remote = f"{registry.host}/ff/assistant:v1"
        client.copy("assistant", remote)
        pushed = list(client.push(remote, insecure=True, stream=True))
        assert pushed[-1].status == "success"
        client.delete(remote)
        assert remote not in _names(client)
        events = list(client.pull(remote, insecure=True, stream=True))
        assert events[-1].status == "success"
        blobs = [e for e in events if e.digest]
        assert blobs and all(e.total and e.completed is not None and e.completed <= e.total for e in blobs)
        assert any(e.completed == e.total for e in blobs)
        assert "Paris" in (_chat(client, remote).message.content or "")
    finally:
        stop_registry(registry)


def test_blob_upload_is_bounded(home: Path, tmp_path: Path) -> None:
    data = b"GGUF" + b"\0" * 4096
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with start_server(home, tmp_path, FF_MAX_UPLOAD_BYTES="1024") as s:
        r = httpx.post(f"{s.url}/api/blobs/{digest}", content=data)
        assert r.status_code == 413 and "larger than 1024" in r.json()["error"]
        chunks = (data[i : i + 512] for i in range(0, len(data), 512))  # no Content-Length: counted
        r = httpx.post(f"{s.url}/api/blobs/{digest}", content=chunks)
        assert r.status_code == 413
        assert httpx.head(f"{s.url}/api/blobs/{digest}").status_code == 404
