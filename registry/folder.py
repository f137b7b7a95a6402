"""A model as a plain folder: what KServe's storage initializer, a modelcar or an image volume leaves at
``/mnt/models``, and what ``ff serve --models-dir`` reads (docs/delivery.md, "Model folders").

Two layouts are read:

* **ff layout** (what ``ff export`` writes): the variant's files at their ``org.cncf.model.filepath``
  (``model.gguf``, ``template.txt``, ``params.json``, …) plus ``.ferrousforge/manifest.json`` and
  ``.ferrousforge/config.json`` (the variant manifest and ModelPack config, byte for byte) and
  ``.ferrousforge/model.json`` (the model's name and index entry). Importing it re-creates the very
  same digests, and every file is checked against the manifest (size, then sha256) before use.
* **a plain GGUF**: exactly one ``*.gguf`` anywhere in the folder (hidden folders aside), e.g. what the
  storage initializer downloads for ``storageUri: s3://bucket/model.gguf``; the chat template is the
  one inside the GGUF.

The folder is imported into the server's store at start (one copy of the weights: give ``FF_HOME`` an
``emptyDir`` of that size); nothing is written into the folder, which may be read-only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from registry.artifact import (
    ArtifactError,
    VariantRef,
    layer,
    open_variant,
    parse_manifest,
    safe_filepath,
    tag_model,
    write_index,
    write_variant,
)
from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
from registry.oci import (
    ANN_BACKEND,
    ANN_FORMAT,
    ANN_TARGET,
    ANN_TASK,
    ANN_VARIANT,
    ANNOTATION_FILEPATH,
    MAX_MANIFEST_BYTES,
    MODEL_WEIGHT,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
)
from registry.reference import parse_reference
from registry.store import Store

META_DIR = ".ferrousforge"
Entry = tuple[str, Path | bytes]
"""A file of the layout: its relative path and where its bytes are (a store blob, or in memory)."""


def layout_entries(store: Store, name: str, variant: VariantRef) -> list[Entry]:
    """The files of ``variant`` in the ff layout, in a fixed order (for reproducible exports)."""
    files = open_variant(store, variant.descriptor.digest)
    manifest_bytes = store.read_blob(variant.descriptor.digest, max_size=MAX_MANIFEST_BYTES)
    config_bytes = store.read_blob(files.manifest.config.digest, max_size=MAX_MANIFEST_BYTES)
    meta = {"name": name, "descriptor": variant.descriptor.wire()}
    entries: list[Entry] = [(path, files.files[path]) for path in sorted(files.files)]
    entries += [
        (f"{META_DIR}/config.json", config_bytes),
        (f"{META_DIR}/manifest.json", manifest_bytes),
        (f"{META_DIR}/model.json", json.dumps(meta, indent=2, sort_keys=True).encode()),
    ]
    return entries


def export_folder(store: Store, name: str, variant: VariantRef, dest: Path) -> list[str]:
    """Write the ff layout of ``variant`` into ``dest`` (created; must be empty); return the paths."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ArtifactError(f"{dest} is not empty")
    out = []
    for rel, src in layout_entries(store, name, variant):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copyfile(src, target)
        else:
            target.write_bytes(src)
        out.append(rel)
    return out


def _sanitize(stem: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return s[:100]


def _ggufs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*.gguf")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])
    )


def folder_model_name(folder: Path, name: str | None = None) -> str:
    """The name the folder's model is served as: ``name``, else the ff layout's, else the GGUF's stem."""
    if name:
        return str(parse_reference(name if ":" in name else f"{name}:latest"))
    meta = folder / META_DIR / "model.json"
    if meta.is_file():
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8"))["name"]
            return str(parse_reference(str(recorded)))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{meta}: not an ff model description: {exc}") from None
    ggufs = _ggufs(folder)
    if len(ggufs) != 1:
        raise ArtifactError(_layout_hint(folder, ggufs))
    return f"{_sanitize(ggufs[0].stem)}:latest"


def _layout_hint(folder: Path, ggufs: list[Path]) -> str:
    found = f"{len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs[:4])})" if ggufs else "no .gguf file"
    return (
        f"{folder}: found {found}; a model folder holds either ff export's layout (with {META_DIR}/) "
        "or exactly one .gguf file"
    )


def import_folder(store: Store, folder: Path, name: str) -> Descriptor:
    """Import ``folder`` (either layout) into ``store`` tagged ``name``; return the index descriptor."""
    if not folder.is_dir():
        raise ArtifactError(f"--models-dir {folder}: no such folder")
    with store.writing():
        if (folder / META_DIR / "manifest.json").is_file():
            index = _import_ff(store, folder)
        else:
            index = _import_gguf(store, folder, name)
        tag_model(store, name, index)
    return index


def _import_ff(store: Store, folder: Path) -> Descriptor:
    meta_dir = folder / META_DIR
    manifest_bytes = (meta_dir / "manifest.json").read_bytes()
    config_bytes = (meta_dir / "config.json").read_bytes()
    m = parse_manifest(manifest_bytes)
    if not isinstance(m, Manifest):
        raise ArtifactError(f"{meta_dir}/manifest.json is not a variant manifest")
    try:
        desc = Descriptor.model_validate(json.loads((meta_dir / "model.json").read_text())["descriptor"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{meta_dir}/model.json: {exc}") from None
    for d in m.layers:
        rel = safe_filepath((d.annotations or {}).get(ANNOTATION_FILEPATH, ""))
        path = folder / rel
        if not path.is_file() or path.stat().st_size != d.size:
            raise ArtifactError(f"{folder}: {rel} is missing or not the {d.size} bytes its manifest says")
        digest, _ = store.add_file(path)
        if digest != d.digest:
            raise ArtifactError(f"{folder}: {rel} hashes to {digest}, its manifest says {d.digest}")
    cdigest, _ = store.add_bytes(config_bytes)
    if cdigest != m.config.digest:
        raise ArtifactError(f"{meta_dir}/config.json is {cdigest}, the manifest says {m.config.digest}")
    mdigest, msize = store.add_bytes(manifest_bytes)
    if mdigest != desc.digest or msize != desc.size:
        raise ArtifactError(f"{meta_dir}/manifest.json is {mdigest}, model.json says {desc.digest}")
    return write_index(store, [desc.model_copy(update={"media_type": OCI_MANIFEST})])


def _import_gguf(store: Store, folder: Path, name: str) -> Descriptor:
    from registry.ollama import _gguf_facts

    ggufs = _ggufs(folder)
    if len(ggufs) != 1:
        raise ArtifactError(_layout_hint(folder, ggufs))
    weight = layer(store, MODEL_WEIGHT, "model.gguf", file=ggufs[0])
    arch, size = _gguf_facts(str(store.blob_path(weight.digest)))
    try:
        cfg = ModelConfig(architecture=arch, format="gguf", param_size=size)
    except ValueError:
        cfg = ModelConfig(architecture=arch, format="gguf")
    pack = ModelPackConfig(
        descriptor=ModelDescriptor(name=parse_reference(name).repository.rsplit("/", 1)[-1]),
        config=cfg, modelfs=ModelFS(diff_ids=[weight.digest]),
    )
    ann = {ANN_VARIANT: "gguf-cpu", ANN_TARGET: "cpu", ANN_BACKEND: "llamacpp", ANN_FORMAT: "gguf",
           ANN_TASK: "chat"}
    return write_index(store, [write_variant(store, pack, [weight], ann)])
