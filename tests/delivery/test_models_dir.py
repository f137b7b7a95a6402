"""ff serve --models-dir: a KServe-storage-initializer folder (one .gguf), ff export's folder, and the
/models of an ff export --modelcar image (read with skopeo, unpacked as a modelcar mount leaves it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import ROOT, Server, start_server

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France?"


def _ready(server: Server, timeout: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(server.url + "/health/ready", timeout=5)
        if r.status_code == 200:
            return dict(r.json())
        if server.proc.poll() is not None:
            break
        time.sleep(0.3)
    raise AssertionError(f"not ready:\n{server.logs()}")


def _chat(server: Server, model: str) -> str:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    text = answer.choices[0].message.content or ""
    assert text.strip(), answer
    return text


def ff(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {"FF_HOME": str(home), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "ffcli", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_storage_initializer_folder(smollm2_gguf: Path, tmp_path: Path) -> None:
    """storageUri: s3://bucket/models/smollm2/ → /mnt/models/<the files>; here one GGUF in a subfolder."""
    mnt = tmp_path / "mnt" / "models"
    (mnt / "smollm2").mkdir(parents=True)
    shutil.copy(smollm2_gguf, mnt / "smollm2" / smollm2_gguf.name)
    with start_server(tmp_path / "home", tmp_path, FF_MODELS_DIR=str(mnt), FF_MODEL_NAME="smollm2-isvc") as s:
        assert _ready(s)["models"] == ["smollm2-isvc:latest"]
        _chat(s, "smollm2-isvc")
        tags = httpx.get(s.url + "/api/tags").json()["models"]
        assert sorted(m["name"] for m in tags) == ["smollm2-isvc:latest", "smollm2-isvc:latest-gguf-cpu"]
    # nothing was written into the folder (a KServe volume is read-only)
    assert sorted(p.name for p in mnt.rglob("*")) == ["SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2"]


@pytest.fixture(scope="module")
def built(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FF_HOME holding smollm2:1 as ``ff build`` makes it from modelfiles/default."""
    home = tmp_path_factory.mktemp("built")
    out = ff("build", "-f", "modelfiles/default", "-t", "smollm2:1", "--build-arg", f"WEIGHTS={smollm2_gguf}",
             home=home)
    assert out.returncode == 0, out.stderr
    return home


def test_modelcar_export_and_serve(built: Path, tmp_path: Path) -> None:
    home = built
    src = Store(home / "store")
    out = ff("export", "smollm2:1", "--modelcar", str(tmp_path / "car"), "--tag", "1", "--json", home=home)
    assert out.returncode == 0, out.stderr
    car = json.loads(out.stdout)
    assert car["variant"] == "q4_1-cpu"
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        pytest.fail("skopeo is missing: apt-get install skopeo (.ci/setup does)")
    info = json.loads(subprocess.run([skopeo, "inspect", f"oci:{tmp_path / 'car'}:1"], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["Layers"] == [car["layer"]] and info["Os"] == "linux"
    assert info["Labels"]["io.ferrousforge.model"] == "smollm2:1"
    raw = json.loads(subprocess.run([skopeo, "inspect", "--raw", f"oci:{tmp_path / 'car'}:1"], check=True,
                                    capture_output=True, text=True).stdout)
    assert raw["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    # unpack the layer as the container runtime does for the modelcar, and serve its /models
    root = tmp_path / "rootfs"
    blob = tmp_path / "car" / "blobs" / "sha256" / car["layer"].split(":")[1]
    with tarfile.open(blob) as tar:
        names = tar.getnames()
        assert all(n == "models" or n.startswith("models/") for n in names)
        assert "models/model.gguf" in names and "models/.ferrousforge/manifest.json" in names
        tar.extractall(root, filter="data")
    again = ff("export", "smollm2:1", "--modelcar", str(tmp_path / "car2"), "--tag", "1", "--json", home=home)
    assert json.loads(again.stdout)["digest"] == car["digest"]  # reproducible image digest
    served = tmp_path / "served"
    with start_server(served, tmp_path, FF_MODELS_DIR=str(root / "models")) as s:
        assert _ready(s)["models"] == ["smollm2:1"]
        _chat(s, "smollm2:1")
    # the same variant manifest digest as the source store's: what was signed is what is served
    vtag = "smollm2:1-q4_1-cpu"
    assert Store(served / "store").resolve(vtag).digest == src.resolve(vtag).digest


def test_bad_folders_fail_clearly(smollm2_gguf: Path, built: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = ff("serve", "--port", "0", "--models-dir", str(empty), home=tmp_path / "h")
    assert out.returncode != 0 and "no .gguf file" in out.stderr and "Traceback" not in out.stderr, out.stderr
    folder = tmp_path / "car"
    assert ff("export", "smollm2:1", "--dir", str(folder), home=built).returncode == 0
    params = folder / "params.json"
    params.write_bytes(params.read_bytes().replace(b"0.2", b"9.9"))  # same size: the digest check catches it
    out = ff("serve", "--port", "0", "--models-dir", str(folder), home=tmp_path / "h2")
    assert out.returncode != 0 and "params.json hashes to" in out.stderr, out.stderr


def test_modelcar_on_a_base_image(built: Path, tmp_path: Path) -> None:
    """--base: the base image's layers first (e.g. busybox, for KServe's sidecar `sh`), /models on top."""
    import hashlib
    import io

    base = tmp_path / "base"
    blobs = base / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return "sha256:" + digest

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("bin/marker")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"sh\n"))
    layer = buf.getvalue()
    ldigest = put(layer)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"base": "yes"}},
                         "rootfs": {"type": "layers", "diff_ids": [ldigest]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": put(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": ldigest, "size": len(layer)}]}).encode()
    (base / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (base / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": put(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "stable"}}]}))
    out = ff("export", "smollm2:1", "--modelcar", str(tmp_path / "car"), "--base", f"{base}:stable", "--json",
             home=built)
    assert out.returncode == 0, out.stderr
    car = json.loads(out.stdout)
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci:{tmp_path / 'car'}:latest"], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["Layers"] == [ldigest, car["layer"]]
    assert info["Labels"]["base"] == "yes" and info["Labels"]["io.ferrousforge.variant"] == "q4_1-cpu"
    cfg = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci:{tmp_path / 'car'}:latest"],
                                    check=True, capture_output=True, text=True).stdout)
    assert cfg["rootfs"]["diff_ids"] == [ldigest, car["layer"]]
