"""The fetch stage: make a BuildPlan's source available locally (:func:`run`).

Sources (the README's Modelfile language): a local ``.gguf``; a local Hugging Face model folder;
``hf://org/repo[@rev]`` through ``huggingface_hub.snapshot_download`` (which honours HF_HOME,
HF_TOKEN and HF_HUB_OFFLINE); or a model in the local store (``FROM name:tag``), whose weight blobs
are reused as they are. A remote OCI reference that is not in the store yet is pulled with
``registry.remote.pull``.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ffbuild.plan import Source, SourceKind
from ffbuild.stages.context import (
    BuildContext,
    BuildError,
    Built,
    Fetched,
    FetchedKind,
    StoredVariant,
    WeightFile,
)
from ffbuild.stages.errors import StageError
from ffbuild.stages.gguf_info import read_gguf_info
from registry.artifact import open_variant, variants_of
from registry.reference import ReferenceError, parse_reference
from registry.store import NotFoundError, Store, StoreError

HF_ALLOW_PATTERNS: tuple[str, ...] = (
    "*.json",
    "*.safetensors",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.jinja",
)
"""What an ``hf://`` fetch downloads: configs, tokenizers and safetensors weights, never code or pickles."""


class FetchError(StageError):
    """The source cannot be fetched (missing file, not in the store, offline without a cached copy)."""


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def fetch_local_gguf(path: Path) -> Fetched:
    if not path.is_file():
        raise FetchError(f"FROM {path}: no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise FetchError(f"FROM {path}: not a GGUF file (it does not start with the GGUF magic)")
    return Fetched(FetchedKind.GGUF, str(path), path=path)


def fetch_hf_folder(path: Path) -> Fetched:
    if not path.is_dir():
        raise FetchError(f"FROM {path}: no such folder")
    if not (path / "config.json").is_file():
        raise FetchError(f"FROM {path}: not a Hugging Face model folder (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise FetchError(
            f"FROM {path}: the folder has no .safetensors weights (pickled .bin weights are not loaded)"
        )
    return Fetched(FetchedKind.HF_FOLDER, str(path), path=path)


def fetch_hf_repo(repo: str, revision: str | None) -> Fetched:
    """Download (or find in the HF cache) ``repo`` at ``revision`` with huggingface_hub."""
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError:
        raise FetchError(
            "FROM hf://…: huggingface_hub is not installed; install it with `pip install 'ferrousforge[hf]'`"
        ) from None
    label = f"hf://{repo}" + (f"@{revision}" if revision else "")
    try:
        folder = Path(
            hub.snapshot_download(repo_id=repo, revision=revision, allow_patterns=list(HF_ALLOW_PATTERNS))
        )
    except Exception as exc:  # huggingface_hub raises many types (offline, auth, missing revision, HTTP)
        name = type(exc).__name__
        hint = ""
        if "LocalEntryNotFound" in name or "Offline" in name:
            hint = " (HF_HUB_OFFLINE is set or the hub is unreachable, and the cache has no copy)"
        elif "Gated" in name or "Authorization" in name or "401" in str(exc):
            hint = " (set HF_TOKEN to a token that can read it)"
        elif "RepositoryNotFound" in name or "RevisionNotFound" in name:
            hint = " (no such repository or revision)"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise FetchError(
            f"FROM {label}: cannot fetch from Hugging Face{hint}: {name}: {first_line}"
        ) from None
    if not _is_hf_folder(folder):
        raise FetchError(
            f"FROM {label}: the snapshot at {folder} has no config.json and .safetensors weights"
        )
    return Fetched(FetchedKind.HF_FOLDER, label, path=folder)


def _pull(reference: str, store: Store) -> None:
    """Pull every variant of a remote model into the store (registry.remote, imported on demand)."""
    try:
        remote = importlib.import_module("registry.remote")
        http = importlib.import_module("registry.http")
    except ImportError:
        raise FetchError(
            f"FROM {reference}: the model is not in the local store and this version cannot pull it "
            f"during a build; run `ff pull {reference}` first"
        ) from None
    errors: tuple[type[BaseException], ...] = (StoreError, http.RegistryError)
    try:
        remote.pull(reference, store=store, all_variants=True)
    except errors as exc:
        raise FetchError(f"FROM {reference}: pull failed: {exc}; try `ff pull {reference}` first") from None


def fetch_store_model(reference: str, store: Store) -> Fetched:
    """A model already in the store (pulled first when the reference names a remote registry)."""
    try:
        ref = parse_reference(reference)
    except ReferenceError as exc:
        raise FetchError(f"FROM {reference}: {exc}") from None
    try:
        desc = store.resolve(ref)
    except NotFoundError:
        if not ref.is_remote:
            raise FetchError(
                f"FROM {reference}: model {ref} is not in the local store "
                "(see `ff list`; build or pull it first)"
            ) from None
        _pull(str(ref), store)
        try:
            desc = store.resolve(ref)
        except NotFoundError:
            raise FetchError(f"FROM {reference}: pulled, but {ref} is still not in the store") from None
    try:
        refs = variants_of(store, ref)
        variants = tuple(StoredVariant(v, open_variant(store, v.descriptor.digest)) for v in refs)
    except StoreError as exc:
        raise FetchError(f"FROM {reference}: {exc}") from None
    return Fetched(
        FetchedKind.STORE, str(ref), reference=str(ref), index_digest=desc.digest, variants=variants
    )


def fetch(source: Source, store: Store) -> Fetched:
    """Fetch a plan's source; raise :class:`FetchError` with the reason when it cannot be had."""
    kind = source.kind
    if kind == SourceKind.GGUF_FILE:
        assert source.path is not None
        return fetch_local_gguf(source.path)
    if kind == SourceKind.HF_FOLDER:
        assert source.path is not None
        return fetch_hf_folder(source.path)
    if kind == SourceKind.CT2_FOLDER:
        assert source.path is not None
        if not (source.path / "model.bin").is_file():
            raise FetchError(f"FROM {source.path}: no CTranslate2 model.bin in the folder")
        return Fetched(FetchedKind.CT2_FOLDER, str(source.path), path=source.path)
    if kind == SourceKind.HF_REPO:
        if not source.repo:
            raise FetchError(f"FROM {source.raw}: no repository named")
        return fetch_hf_repo(source.repo, source.revision)
    if kind == SourceKind.OCI:
        return fetch_store_model(source.reference or source.raw, store)
    if kind == SourceKind.SAFETENSORS_FILE:
        raise FetchError(
            f"FROM {source.raw}: a lone .safetensors file has no model config; give the Hugging Face "
            "folder that holds it with its config.json and tokenizer"
        )
    if kind == SourceKind.ONNX_FILE:
        assert source.path is not None
        if not source.path.is_file():
            raise FetchError(f"FROM {source.path}: no such file")
        return Fetched(FetchedKind.ONNX, str(source.path), path=source.path)
    raise FetchError(f"FROM {source.raw}: unsupported source kind {kind}")


def blob_file(path: Path) -> WeightFile:
    """A store blob: its name is its digest (checked when it was stored), so it is not hashed again."""
    return WeightFile(path, "sha256:" + path.name, path.stat().st_size)


def stored_built(sv: StoredVariant) -> Built:
    """A stored GGUF variant as a weight the build has (its blobs, reused as they are)."""
    weight = sv.files.weights[0]
    return Built(
        sv.ref.quantization,
        blob_file(weight),
        read_gguf_info(weight),
        adapters=tuple(blob_file(a) for a in sv.files.adapters),
    )


def run(ctx: BuildContext) -> str:
    """The fetch stage: the plan's source into ``ctx.fetched``."""
    for v in ctx.plan.variants:  # refused before anything is fetched
        if v.family == "genai" and ctx.plan.source.kind not in (SourceKind.HF_FOLDER, SourceKind.HF_REPO):
            raise BuildError(
                f"variant {v.name}: {v.backend} chat/generate variants are exported by ONNX Runtime "
                "GenAI from Hugging Face weights (FROM a model folder or hf://org/repo), "
                f"not a {ctx.plan.source.kind}"
            )
    ctx.fetched = fetch(ctx.plan.source, ctx.store)
    return ctx.fetched.description
