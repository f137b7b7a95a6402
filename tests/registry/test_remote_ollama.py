"""`ff pull` of an Ollama-format manifest (pushed by hand to a real registry) gives a servable ff model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from remote_testkit import RegistryServer, ollama_manifest, push_raw

from registry.artifact import ArtifactError, open_variant, variants_of
from registry.oci import (
    ANN_WEIGHT_ROLE,
    DOCKER_MANIFEST,
    FF_PARAMS,
    FF_TEMPLATE,
    MODEL_WEIGHT,
    OLLAMA_LICENSE,
    OLLAMA_MESSAGES,
    OLLAMA_PARAMS,
    OLLAMA_PROJECTOR,
    OLLAMA_SYSTEM,
    OLLAMA_TEMPLATE,
    PROJECTOR_FILEPATH,
    ROLE_PROJECTOR,
)
from registry.reference import parse_reference
from registry.remote import pull
from registry.store import Store

pytestmark = pytest.mark.registry

TEMPLATE = (
    b"{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    b"<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
)
PARAMS = json.dumps({"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}).encode()
MESSAGES = json.dumps(
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
).encode()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_pull_ollama_manifest(registry_server: RegistryServer, smollm2_gguf: Path, tmp_path: Path) -> None:
    weights = smollm2_gguf.read_bytes()
    manifest, blobs = ollama_manifest(weights, [
        (TEMPLATE, OLLAMA_TEMPLATE),
        (b"You are a helpful assistant.", OLLAMA_SYSTEM),
        (PARAMS, OLLAMA_PARAMS),
        (MESSAGES, OLLAMA_MESSAGES),
        (b"Apache License 2.0", OLLAMA_LICENSE),
    ])
    host = registry_server.host
    remote_digest = push_raw(host, "library/smollm2", "135m", blobs, manifest, DOCKER_MANIFEST)
    store = Store(tmp_path / "store")
    ref = f"{registry_server.host}/library/smollm2:135m"
    got = pull(ref, store=store, local_name="smol:latest")
    assert got.ollama and got.digest == remote_digest and got.variants == ["q4_1-cpu"]
    assert store.resolve(ref).digest == got.local_digest == store.resolve("smol:latest").digest

    (v,) = variants_of(store, ref)
    assert (v.name, v.backend, v.format, v.quantization) == ("q4_1-cpu", "llamacpp", "gguf", "q4_1")
    assert v.task == "chat"
    files = open_variant(store, v.descriptor.digest)
    assert files.weights[0] == store.blob_path(_digest(weights))  # the same blob, not a copy
    assert files.template == TEMPLATE.decode() and files.system == "You are a helpful assistant."
    assert files.params == json.loads(PARAMS) and files.messages == json.loads(MESSAGES)
    assert files.licenses == ["Apache License 2.0"]
    assert files.config.config.architecture == "llama" and files.config.config.param_size == "135M"
    assert files.config.config.quantization == "q4_1" and files.config.config.format == "gguf"
    types = {d.media_type for d in files.manifest.layers}
    assert MODEL_WEIGHT in types and FF_TEMPLATE in types and FF_PARAMS in types
    assert not any(t.startswith("application/vnd.ollama") for t in types)



def test_pull_ollama_manifest_with_a_projector(
    registry_server: RegistryServer, qwen2vl_ggufs: tuple[Path, Path], tmp_path: Path
) -> None:
    """An Ollama vision model (model + projector layers) pulls into the shape ff build writes."""
    model, projector = qwen2vl_ggufs
    manifest, blobs = ollama_manifest(model.read_bytes(), [(projector.read_bytes(), OLLAMA_PROJECTOR)])
    push_raw(registry_server.host, "library/vlm", "1", blobs, manifest, DOCKER_MANIFEST)
    store = Store(tmp_path / "store")
    pull(f"{registry_server.host}/library/vlm:1", store=store, local_name="vlm:1")
    (v,) = variants_of(store, parse_reference("vlm:1"))
    files = open_variant(store, v.descriptor.digest)
    assert files.weights == [store.blob_path(_digest(model.read_bytes()))]
    assert files.projector == store.blob_path(_digest(projector.read_bytes()))
    proj = [d for d in files.manifest.layers if (d.annotations or {}).get(ANN_WEIGHT_ROLE) == ROLE_PROJECTOR]
    assert [(d.media_type, (d.annotations or {})["org.cncf.model.filepath"]) for d in proj] == [
        (MODEL_WEIGHT, PROJECTOR_FILEPATH)
    ]
    caps = files.config.config.capabilities
    assert caps is not None and caps.input_types == ["text", "image"]


def test_unknown_ollama_layer_is_refused(registry_server: RegistryServer, tmp_path: Path) -> None:
    unknown = (b"x", "application/vnd.ollama.image.embedding-table")
    manifest, blobs = ollama_manifest(b"GGUF" + b"\0" * 64, [unknown])
    push_raw(registry_server.host, "library/vision", "1", blobs, manifest, DOCKER_MANIFEST)
    store = Store(tmp_path / "store")
    with pytest.raises(ArtifactError, match=r"image\.embedding-table is not supported"):
        pull(f"{registry_server.host}/library/vision:1", store=store)
    assert store.tags() == [] and list(store.blobs.iterdir()) == []  # refused before fetching
