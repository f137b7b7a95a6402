"""The fetch stage: local GGUF, HF folder, hf:// through an offline HF cache, models in the store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ffbuild.cache import file_digest
from ffbuild.plan import Source, SourceKind, Variant
from ffbuild.stages.context import FetchedKind, WeightFile
from ffbuild.stages.fetch import FetchError, fetch
from ffbuild.stages.package import ModelMeta, VariantPayload, package_model
from registry.reference import parse_reference
from registry.store import Store

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hf_cache(src: Path, hf_home: Path, repo: str) -> Path:
    """Lay ``src`` out as huggingface_hub's cache keeps a downloaded repo (refs/main → snapshot)."""
    base = hf_home / "hub" / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(COMMIT)
    shutil.copytree(src, base / "snapshots" / COMMIT)
    return base / "snapshots" / COMMIT


def test_local_gguf(smollm2_gguf: Path, tmp_path: Path) -> None:
    f = fetch(Source(kind=SourceKind.GGUF_FILE, raw="x.gguf", path=smollm2_gguf), Store(tmp_path / "s"))
    assert f.kind == FetchedKind.GGUF and f.path == smollm2_gguf


def test_local_hf_folder(minilm_folder: Path, tmp_path: Path) -> None:
    f = fetch(Source(kind=SourceKind.HF_FOLDER, raw="./m", path=minilm_folder), Store(tmp_path / "s"))
    assert f.kind == FetchedKind.HF_FOLDER and f.path == minilm_folder


def _bad_cases(tmp: Path) -> list[tuple[Source, str]]:
    not_gguf = tmp / "fake.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    empty = tmp / "empty"
    empty.mkdir()
    return [
        (Source(kind=SourceKind.GGUF_FILE, raw="gone.gguf", path=tmp / "gone.gguf"), "no such file"),
        (Source(kind=SourceKind.GGUF_FILE, raw="fake.gguf", path=not_gguf), "not a GGUF file"),
        (Source(kind=SourceKind.HF_FOLDER, raw="./empty", path=empty), "no config.json"),
        (
            Source(kind=SourceKind.OCI, raw="nothere:latest", reference="nothere:latest"),
            "not in the local store",
        ),
        (Source(kind=SourceKind.SAFETENSORS_FILE, raw="w.safetensors", path=tmp / "w.safetensors"), "config"),
        (Source(kind=SourceKind.ONNX_FILE, raw="m.onnx", path=tmp / "m.onnx"), "no such file"),
    ]


def test_bad_sources_give_clear_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    for source, message in _bad_cases(tmp_path):
        with pytest.raises(FetchError, match=message):
            fetch(source, store)


_FETCH_HF = """
import json, sys
from ffbuild.plan import Source, SourceKind
from ffbuild.stages.fetch import fetch, FetchError
from registry.store import Store
repo, rev = sys.argv[1], sys.argv[2] or None
src = Source(kind=SourceKind.HF_REPO, raw="hf://" + repo, repo=repo, revision=rev)
try:
    f = fetch(src, Store())
    print(json.dumps({"path": str(f.path), "kind": str(f.kind)}))
except FetchError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _fetch_hf(tmp_path: Path, repo: str, revision: str = "") -> dict[str, str]:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "FF_HOME": str(tmp_path / "ff"),
        "PYTHONPATH": str(REPO),
    }
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", _FETCH_HF, repo, revision],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_hf_repo_from_offline_cache(minilm_folder: Path, tmp_path: Path) -> None:
    snapshot = make_hf_cache(minilm_folder, tmp_path / "hf", "sentence-transformers/all-MiniLM-L6-v2")
    got = _fetch_hf(tmp_path, "sentence-transformers/all-MiniLM-L6-v2")
    assert got == {"path": str(snapshot), "kind": "hf-folder"}
    assert _fetch_hf(tmp_path, "sentence-transformers/all-MiniLM-L6-v2", COMMIT)["path"] == str(snapshot)


def test_hf_repo_missing_offline_is_a_clear_error(tmp_path: Path) -> None:
    got = _fetch_hf(tmp_path, "nobody/nothing")
    assert "HF_HUB_OFFLINE" in got["error"] and "hf://nobody/nothing" in got["error"]


def test_store_model(smollm2_gguf: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    w = WeightFile(smollm2_gguf, file_digest(smollm2_gguf), smollm2_gguf.stat().st_size)
    variant = Variant(quantization="q4_1", device="cpu", backend="llamacpp", family="gguf")
    payload = VariantPayload(variant, w, "llama", 134_515_008, "q4_1")
    index, _, _ = package_model(
        store, parse_reference("base:v1"), ModelMeta(name="base", task="chat", system="hi"), [payload]
    )
    f = fetch(Source(kind=SourceKind.OCI, raw="base:v1", reference="base:v1"), store)
    assert f.kind == FetchedKind.STORE and f.index_digest == index.digest
    (v,) = f.variants
    assert v.ref.name == "q4_1-cpu" and v.files.system == "hi"
    assert v.files.weights[0] == store.blob_path(w.digest)


@pytest.mark.registry
def test_remote_reference_is_pulled_then_derived(smollm2_gguf: Path, tmp_path: Path) -> None:
    """FROM host/name:tag not in the store: registry.remote.pull fetches it (a real docker-registry)."""
    from ffbuild.build import BuildOptions, build
    from ffbuild.cache import BuildCache
    from ffbuild.plan import BuildPlan
    from registry.artifact import variants_of
    from registry.remote import push
    from tests.registry.remote_testkit import start_registry, stop_registry

    server = start_registry(tmp_path / "reg", None)
    try:
        origin = Store(tmp_path / "origin")
        w = WeightFile(smollm2_gguf, file_digest(smollm2_gguf), smollm2_gguf.stat().st_size)
        variant = Variant(quantization="q4_1", device="cpu", backend="llamacpp", family="gguf")
        payload = VariantPayload(variant, w, "llama", 134_515_008, "int4")
        package_model(origin, parse_reference("smol:1"), ModelMeta(name="smol", task="chat"), [payload])
        remote = f"{server.host}/team/smol:1"
        push("smol:1", store=origin, remote_ref=remote)

        store = Store(tmp_path / "local")  # empty: the build must pull
        plan = BuildPlan(
            modelfile=None,
            context=tmp_path,
            source=Source(kind=SourceKind.OCI, raw=remote, reference=remote),
            variants=(Variant(quantization="source", device="cpu", backend="llamacpp", family="gguf"),),
            task="chat",
            system="Derived.",
        )
        build(
            plan,
            parse_reference("derived:1"),
            store=store,
            cache=BuildCache(tmp_path / "c"),
            options=BuildOptions(verify=False),
        )
        (v,) = variants_of(store, "derived:1")
        layers = store.read_json(v.descriptor.digest)["layers"]
        assert layers[0]["digest"] == w.digest  # the pulled weight blob, not a copy of anything else
    finally:
        stop_registry(server)
