"""``ff export --modelcar``: one variant as an OCI *image* whose layer holds ``/models/…``.

KServe's ``oci://`` storage URI (modelcars) and Kubernetes image volumes mount such an image and read
``/models``; ff serve then reads it as a model folder (:mod:`registry.folder`, the ff layout, so the
digests of the files match the signed artifact's). The image is written as an OCI image layout
(``oci-layout``, ``index.json``, ``blobs/``), which ``skopeo inspect oci:DIR:TAG`` reads and
``skopeo copy oci:DIR:TAG docker://HOST/REPO:TAG`` pushes.

The layer is an uncompressed tar (GGUF weights do not compress) with fixed metadata (mtime 0,
uid/gid 0, modes 0644/0755) so the same variant always gives the same image digest. KServe's modelcar
*sidecar* runs ``sh`` in the image to keep it alive, so for modelcars give a base image with a shell
(``--base``: an OCI layout such as ``skopeo copy docker://busybox oci:busybox:latest`` makes); its
layers come first and ``/models`` is added on top. Image volumes need no base.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from registry.artifact import ArtifactError, VariantRef, parse_manifest
from registry.atomic import atomic_write_bytes
from registry.folder import Entry, layout_entries
from registry.oci import (
    ANNOTATION_CREATED,
    ANNOTATION_REF_NAME,
    ANNOTATION_TITLE,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    OCI_MANIFEST,
    Manifest,
    canonical_json,
)
from registry.store import Store

OCI_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MODELS_DIR = "models"
EPOCH = "1970-01-01T00:00:00Z"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


@dataclass
class ModelcarResult:
    layout: str
    tag: str
    digest: str  # the image manifest
    layer: str  # the /models layer (its digest is also its diff_id: the tar is uncompressed)
    size: int
    files: list[str]


def _tar(entries: list[Entry], out: Path) -> None:
    dirs: set[str] = set()
    with open(out, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(path: str) -> None:
            if path in dirs:
                return
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if parent:
                add_dir(parent)
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
            dirs.add(path)

        add_dir(MODELS_DIR)
        for rel, src in entries:
            name = f"{MODELS_DIR}/{rel}"
            add_dir(name.rsplit("/", 1)[0])
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = 0o644, 0, 0, 0
            if isinstance(src, Path):
                info.size = src.stat().st_size
                with open(src, "rb") as f:
                    tar.addfile(info, f)
            else:
                info.size = len(src)
                tar.addfile(info, io.BytesIO(src))


def _sha256_file(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


class _Layout:
    """An OCI image layout being written (blobs by digest, atomic writes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def add_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self.blob(digest), data)
        return digest, len(data)

    def add_file(self, path: Path) -> tuple[str, int]:
        digest, size = _sha256_file(path)
        path.replace(self.blob(digest))
        return digest, size


def _base(base: Path, tag: str | None) -> tuple[list[dict[str, object]], dict[str, object], Path]:
    """(layers, config, blobs folder) of the image ``tag`` (or the only one) in the OCI layout ``base``."""
    try:
        index = json.loads((base / "index.json").read_text())
        entries = [e for e in index["manifests"] if isinstance(e, dict)]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"--base {base}: not an OCI image layout: {exc}") from None
    if tag is not None:
        entries = [e for e in entries if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) == tag]
    if len(entries) != 1:
        raise ArtifactError(f"--base {base}: {len(entries)} images match; name one as DIR:TAG")
    blobs = base / "blobs" / "sha256"
    m = parse_manifest((blobs / str(entries[0]["digest"]).split(":", 1)[1]).read_bytes())
    if not isinstance(m, Manifest) or m.media_type not in (None, OCI_MANIFEST):
        raise ArtifactError(f"--base {base}: the image must be a single-platform OCI image manifest")
    config = json.loads((blobs / m.config.digest.split(":", 1)[1]).read_bytes())
    return [d.wire() for d in m.layers], config, blobs


def write_modelcar(
    store: Store, name: str, variant: VariantRef, out: Path, *, tag: str = "latest",
    base: Path | None = None, base_tag: str | None = None,
) -> ModelcarResult:
    """Write the modelcar image of ``variant`` (of model ``name``) as an OCI layout at ``out``."""
    entries = layout_entries(store, name, variant)
    out.mkdir(parents=True, exist_ok=True)
    layout = _Layout(out)
    layers: list[dict[str, object]] = []
    config: dict[str, object] = {
        "architecture": _ARCH.get(platform.machine().lower(), platform.machine().lower()), "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "created": EPOCH,
    }
    if base is not None:
        base_layers, config, blobs = _base(base, base_tag)
        for d in base_layers:
            src = blobs / str(d["digest"]).split(":", 1)[1]
            dst = layout.blob(str(d["digest"]))
            if not dst.exists():
                dst.write_bytes(src.read_bytes())
        layers = list(base_layers)
    with tempfile.NamedTemporaryFile(dir=out, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        _tar(entries, tmp_path)
        ldigest, lsize = layout.add_file(tmp_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    layers.append({"mediaType": OCI_LAYER_TAR, "digest": ldigest, "size": lsize,
                   "annotations": {ANNOTATION_TITLE: "models"}})
    rootfs = config.get("rootfs")
    diff_ids = list(rootfs.get("diff_ids", [])) if isinstance(rootfs, dict) else []
    config["rootfs"] = {"type": "layers", "diff_ids": [*diff_ids, ldigest]}
    inner = config.get("config")
    cfg: dict[str, object] = dict(inner) if isinstance(inner, dict) else {}
    old = cfg.get("Labels")
    labels: dict[str, object] = dict(old) if isinstance(old, dict) else {}
    labels.update({"io.ferrousforge.model": name, "io.ferrousforge.variant": variant.name,
                   "io.ferrousforge.manifest": variant.descriptor.digest})
    cfg["Labels"] = labels
    config["config"] = cfg
    cdigest, csize = layout.add_bytes(canonical_json(config))
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_IMAGE_CONFIG, "digest": cdigest, "size": csize},
        "layers": layers,
        "annotations": {ANNOTATION_CREATED: EPOCH, "io.ferrousforge.model": name},
    })
    if len(manifest) > MAX_MANIFEST_BYTES:
        raise ArtifactError("the modelcar manifest is over the size limit")
    mdigest, msize = layout.add_bytes(manifest)
    index_path = out / "index.json"
    try:
        current = json.loads(index_path.read_text()) if index_path.exists() else {}
        kept = [e for e in current.get("manifests", [])
                if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag]
    except (OSError, ValueError, AttributeError):
        kept = []
    entry = {"mediaType": OCI_MANIFEST, "digest": mdigest, "size": msize,
             "annotations": {ANNOTATION_REF_NAME: tag}}
    atomic_write_bytes(out / "oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
    atomic_write_bytes(index_path, canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                   "manifests": [*kept, entry]}))
    return ModelcarResult(str(out), tag, mdigest, ldigest, lsize, [rel for rel, _ in entries])
