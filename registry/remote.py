"""``ff push`` / ``ff pull``: models between the local store and an OCI registry (docs/registry.md).

Push sends every blob the registry lacks (HEAD first), each variant manifest, each variant's own tag
(``<tag>-<variant>``) and the index under the tag. Pull fetches the index (stored byte for byte, so
its digest matches), picks the variants that fit this machine (:mod:`registry.select`) and fetches
only their manifests and blobs: ``ff show`` then lists the other variants as not present. Everything
from the registry is checked before it is written: manifest sizes while reading, digests and sizes of
every blob while streaming, layer paths (``registry.artifact.safe_filepath``), and archive layers are
refused. Ollama-format manifests are converted on the way in (:mod:`registry.ollama`).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from registry.artifact import ArtifactError, VariantRef, parse_manifest, safe_filepath, variant_tag
from registry.auth import client_for
from registry.download import BlobStats, download_blob, partial_bytes
from registry.errors import RemoteError as RemoteError
from registry.errors import TransferInterrupted
from registry.http import RegistryClient
from registry.oci import (
    ANN_VARIANT,
    ANNOTATION_FILEPATH,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
)
from registry.ollama import ff_layers, is_ollama_manifest, store_ollama_model
from registry.reference import Reference, parse_reference
from registry.select import HostInfo, select_variant
from registry.signing import required_key
from registry.signing import verify as verify_signature
from registry.store import Store
from registry.transfer import (
    ProgressEvent,
    ProgressFn,
    TransferOptions,
    get_manifest,
    no_progress,
    put_manifest,
    serialised,
)
from registry.upload import UploadStats, upload_blob

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)


@dataclass
class PushResult:
    remote: str
    digest: str
    media_type: str
    tags: list[str] = field(default_factory=list)
    blobs_uploaded: int = 0
    bytes_uploaded: int = 0
    blobs_skipped: int = 0
    bytes_skipped: int = 0
    blobs_mounted: int = 0  # linked by the registry from another repository: no bytes sent
    bytes_resumed: int = 0  # the registry kept these from an earlier, interrupted push


@dataclass
class PullResult:
    remote: str
    digest: str  # the remote index/manifest digest (for Ollama models: of the Ollama manifest)
    local_digest: str  # what the store tags point at (differs from ``digest`` only for Ollama models)
    variants: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    blobs_fetched: int = 0
    blobs_present: int = 0
    bytes_downloaded: int = 0
    bytes_resumed: int = 0
    ollama: bool = False
    signed_by_key: bool = False  # a signature by the --verify-key / FF_VERIFY_KEY key was checked


T = TypeVar("T")
SMALL_BLOB = 1024 * 1024
"""Pull fetches blobs under this size (configs, text layers) before the large ones."""


def _each(jobs: int, work: list[Callable[[], T]], stop: threading.Event) -> list[T]:
    """Run ``work`` with at most ``jobs`` at once, results in order. The first failure sets ``stop``
    (the other transfers end at their next chunk, resumable), what has not started never starts, and
    the failure is raised once all have ended (not the ``TransferInterrupted`` of the others)."""
    if jobs <= 1 or len(work) <= 1:
        return [w() for w in work]
    with ThreadPoolExecutor(min(jobs, len(work)), thread_name_prefix="ff-blob") as pool:
        futures = [pool.submit(w) for w in work]
        for f in as_completed(futures):
            if f.exception() is not None:
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                break
    errors = [e for f in futures if not f.cancelled() and (e := f.exception()) is not None]
    if errors:
        raise next((e for e in errors if not isinstance(e, TransferInterrupted)), errors[0])
    return [f.result() for f in futures]


def _remote(ref: str | Reference) -> Reference:
    r = parse_reference(ref) if isinstance(ref, str) else ref
    if r.host is None:
        raise RemoteError(f"{r}: a remote reference needs a registry host, e.g. 127.0.0.1:5000/ns/{r.name}")
    return r


# --- push --------------------------------------------------------------------------------------------
def push(
    ref: str,
    *,
    store: Store,
    remote_ref: str | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
    progress: ProgressFn = no_progress,
    client: RegistryClient | None = None,
    options: TransferOptions | None = None,
    stop: threading.Event | None = None,
) -> PushResult:
    """Push the local model ``ref`` to ``remote_ref`` (default: ``ref`` itself, which then needs a host).

    Blobs go ``options.jobs`` at a time (default :meth:`TransferOptions.from_env`), largest first.
    Setting ``stop`` ends the push after each upload's chunk in flight (``TransferInterrupted``); the
    next push of the same model resumes. A blob that fails sets ``stop`` too, so the others end soon.
    """
    opts = options or TransferOptions.from_env()
    progress = serialised(progress)
    stop = stop or threading.Event()
    local = parse_reference(ref)
    target = _remote(remote_ref or ref)
    top = store.resolve(local)
    top_bytes = store.read_blob(top.digest, max_size=MAX_MANIFEST_BYTES)
    doc = parse_manifest(top_bytes)
    children: list[tuple[Descriptor, bytes]] = []
    if isinstance(doc, Index):
        missing = [VariantRef(d).name for d in doc.manifests if not store.has_blob(d.digest)]
        if missing:
            raise RemoteError(
                f"{local}: variants {', '.join(missing)} are not in the store (pulled without them?); "
                "pull with --all-variants before pushing the whole model"
            )
        children = [(d, store.read_blob(d.digest, max_size=MAX_MANIFEST_BYTES)) for d in doc.manifests]
        manifests = [parse_manifest(b) for _, b in children]
    else:
        manifests = [doc]
    cl = client or client_for(target.host or "", insecure=insecure, ca_file=ca_file)
    repo = target.repository
    media_type = doc.media_type or (OCI_INDEX if isinstance(doc, Index) else OCI_MANIFEST)
    result = PushResult(remote=str(target), digest=top.digest, media_type=media_type)
    progress(ProgressEvent("resolving", top.digest, top.size, 0, 0, str(target)))
    if any(not isinstance(m, Manifest) for m in manifests):
        raise RemoteError(f"{local}: nested indexes are not supported")
    blobs = _push_blobs(
        _PushJob(cl, repo, store, progress, opts, stop), [m for m in manifests if isinstance(m, Manifest)],
        str(local), result,
    )
    store.add_blob_sources(blobs, cl.host, repo)
    for d, data in children:
        put_manifest(cl, repo, d.digest, data, d.media_type)
        progress(ProgressEvent("manifest", d.digest, d.size, d.size, 0, VariantRef(d).name))
        vname = (d.annotations or {}).get(ANN_VARIANT)
        if vname and target.tag:
            vtag = variant_tag(target.tag, vname)
            put_manifest(cl, repo, vtag, data, d.media_type)
            result.tags.append(str(target.with_tag(vtag)))
    put_manifest(cl, repo, target.tag or top.digest, top_bytes, media_type)
    result.tags.insert(0, str(target))
    progress(ProgressEvent("success", top.digest, top.size, top.size, result.bytes_uploaded, str(target)))
    return result


@dataclass(frozen=True)
class _PushJob:
    cl: RegistryClient
    repo: str
    store: Store
    progress: ProgressFn
    opts: TransferOptions
    stop: threading.Event


def _push_blobs(job: _PushJob, manifests: list[Manifest], local: str, result: PushResult) -> list[str]:
    """Send every config and layer of ``manifests`` the repository lacks, ``jobs`` at a time, largest
    first; count them in ``result``; return their digests."""
    blobs: dict[str, tuple[Descriptor, Path, str]] = {}
    for m in manifests:
        for d in [m.config, *m.layers]:
            path = job.store.blob_path(d.digest)
            if d.digest in blobs:
                continue
            if not path.is_file():
                raise RemoteError(f"{local}: blob {d.digest} is missing from the store")
            title = (d.annotations or {}).get(ANNOTATION_FILEPATH, "config" if d is m.config else "")
            blobs[d.digest] = (d, path, title)

    def send(d: Descriptor, path: Path, title: str) -> Callable[[], UploadStats]:
        return lambda: upload_blob(
            job.cl, job.repo, path, d, job.progress, title=title, options=job.opts, store=job.store,
            stop=job.stop,
        )

    order = sorted(blobs.values(), key=lambda b: -b[0].size)
    total = sum(d.size for d, _, _ in order)
    job.progress(ProgressEvent("total", total=total, title=f"{len(order)} blobs"))
    for (d, _, _), st in zip(order, _each(job.opts.jobs, [send(*b) for b in order], job.stop), strict=True):
        result.bytes_resumed += st.resumed
        if st.present or st.mounted_from:
            result.blobs_skipped += st.present
            result.blobs_mounted += bool(st.mounted_from)
            result.bytes_skipped += d.size
        else:
            result.blobs_uploaded += 1
            result.bytes_uploaded += st.sent
    return list(blobs)


# --- pull --------------------------------------------------------------------------------------------
def check_variant(m: Manifest, where: str) -> None:
    """Refuse a variant manifest whose layers could write outside their folder or are archives."""
    if m.config.size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{where}: config of {m.config.size} bytes is over the {MAX_MANIFEST_BYTES} cap")
    seen: set[str] = set()
    for d in m.layers:
        mt = d.media_type.lower()
        if ".tar" in mt or mt.endswith("+gzip") or mt.endswith("+zstd") or "tar+" in mt:
            raise ArtifactError(
                f"{where}: layer {d.digest[:19]} is an archive ({d.media_type}); ff pulls single-file "
                "layers only and never unpacks archives from a registry"
            )
        path = (d.annotations or {}).get(ANNOTATION_FILEPATH)
        if path is None:
            raise ArtifactError(f"{where}: layer {d.digest[:19]} has no {ANNOTATION_FILEPATH} annotation")
        safe_filepath(path)
        if path in seen:
            raise ArtifactError(f"{where}: two layers claim the file path {path!r}")
        seen.add(path)


def _fetch_blobs(
    cl: RegistryClient, repo: str, store: Store, descs: list[tuple[Descriptor, str]], progress: ProgressFn,
    result: PullResult, opts: TransferOptions, stop: threading.Event,
) -> None:
    missing = {d.digest: d.size for d, _ in descs if not store.has_blob(d.digest)}
    needed = sum(missing.values()) - sum(partial_bytes(store, dg) for dg in missing)
    free = shutil.disk_usage(store.root).free
    if needed > free:
        raise RemoteError(
            f"the pull needs {needed} more bytes in {store.root}, but only {free} are free; "
            "nothing was fetched"
        )
    unique = list({d.digest: (d, title) for d, title in descs}.values())

    def fetch(d: Descriptor, title: str) -> Callable[[], BlobStats]:
        return lambda: download_blob(cl, repo, store, d, progress, title=title, options=opts, stop=stop)

    progress(ProgressEvent("total", total=sum(d.size for d, _ in unique), title=f"{len(unique)} blobs"))
    # Small blobs first: a bad config or text layer fails the pull before the weights are fetched.
    small = sorted((b for b in unique if b[0].size < SMALL_BLOB), key=lambda b: b[0].size)
    large = sorted((b for b in unique if b[0].size >= SMALL_BLOB), key=lambda b: -b[0].size)
    for group in (small, large):
        for stats in _each(opts.jobs, [fetch(*b) for b in group], stop):
            if stats.present:
                result.blobs_present += 1
            else:
                result.blobs_fetched += 1
            result.bytes_downloaded += stats.transferred
            result.bytes_resumed += stats.resumed
    store.add_blob_sources([d.digest for d, _ in unique], cl.host, repo)


def _choose(
    index: Index,
    *,
    target: str | None,
    quantize: str | None,
    variant: str | None,
    all_variants: bool,
    host: HostInfo | None,
    backend: str | None = None,
) -> list[VariantRef]:
    refs = [VariantRef(d) for d in index.manifests]
    if all_variants:
        return refs
    return [
        select_variant(refs, target=target, quantize=quantize, variant=variant, backend=backend, host=host)
    ]


@dataclass(frozen=True)
class _Top:
    """What a reference resolved to: the registry's top manifest or index, read and checked."""

    r: Reference
    cl: RegistryClient
    data: bytes
    media_type: str
    digest: str
    doc: Manifest | Index

    @property
    def repo(self) -> str:
        return self.r.repository


_Fetched = list[tuple[VariantRef, bytes, Manifest]]


def pull(
    ref: str,
    *,
    store: Store,
    target: str | None = None,
    quantize: str | None = None,
    variant: str | None = None,
    all_variants: bool = False,
    local_name: str | None = None,
    backend: str | None = None,
    insecure: bool = False,
    ca_file: str | None = None,
    progress: ProgressFn = no_progress,
    host: HostInfo | None = None,
    client: RegistryClient | None = None,
    verify_key: str | None = None,
    options: TransferOptions | None = None,
    stop: threading.Event | None = None,
) -> PullResult:
    """Pull ``host/ns/name:tag`` (or ``…@sha256:…``) into the store; see the module docstring.

    With ``verify_key`` (or ``FF_VERIFY_KEY``; ``FF_REQUIRE_SIGNATURE=1`` demands one) the index must
    carry a cosign signature by that key (:mod:`registry.signing`), checked before anything is stored.
    Blobs move ``options.jobs`` at a time; setting ``stop`` (as a failed blob does) ends the pull where it
    stands, resumable.
    """
    key = required_key(verify_key)
    opts = options or TransferOptions.from_env()
    progress = serialised(progress)
    stop = stop or threading.Event()
    with store.writing():  # prune waits: fetched blobs are unreachable until the tags are written
        r = _remote(ref)
        cl = client or client_for(r.host or "", insecure=insecure, ca_file=ca_file)
        progress(ProgressEvent("resolving", title=str(r)))
        data, media_type, digest = get_manifest(cl, r.repository, r.digest or r.tag or "latest")
        if r.digest and digest != r.digest:
            raise RemoteError(f"{r}: the registry answered {digest}")
        if key is not None:
            verify_signature(cl, r.repository, digest, key)
        top = _Top(r, cl, data, media_type, digest, parse_manifest(data))
        tag = r.tag or ("sha256-" + digest.split(":", 1)[1])
        names = [r.with_tag(tag)] + ([parse_reference(local_name)] if local_name else [])
        result = PullResult(remote=str(r), digest=digest, local_digest=digest, signed_by_key=key is not None)
        if isinstance(top.doc, Manifest) and is_ollama_manifest(top.doc):
            return _pull_ollama(top, top.doc, store, names, progress, result, opts, stop)
        _check_media_types(top)
        chosen = _choose(
            top.doc, target=target, quantize=quantize, variant=variant, all_variants=all_variants, host=host,
            backend=backend,
        ) if isinstance(top.doc, Index) else []
        fetched = _variant_manifests(top, chosen)
        blobs: list[tuple[Descriptor, str]] = []
        for v, _, m in fetched:
            blobs.append((m.config, f"{v.name} config"))
            blobs += [(d, (d.annotations or {}).get(ANNOTATION_FILEPATH, "")) for d in m.layers]
        _fetch_blobs(cl, top.repo, store, blobs, progress, result, opts, stop)
        _store_pulled(top, fetched, store, names, tag, result)
        n_top = len(data)
        progress(ProgressEvent("success", digest, n_top, n_top, result.bytes_downloaded, str(r)))
        return result


def _pull_ollama(
    top: _Top, doc: Manifest, store: Store, names: list[Reference], progress: ProgressFn, result: PullResult,
    opts: TransferOptions, stop: threading.Event,
) -> PullResult:
    """An Ollama model (its config and layers) stored as a one-variant ff model."""
    result.ollama = True
    if doc.config.size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{top.r}: Ollama config of {doc.config.size} bytes is over the limit")
    ff_layers(doc)  # refuses unsupported layer types before anything is fetched
    layer_blobs = [(d, d.media_type.rsplit(".", 1)[-1]) for d in doc.layers]
    blobs = [(doc.config, "config"), *layer_blobs]
    _fetch_blobs(top.cl, top.repo, store, blobs, progress, result, opts, stop)
    index_desc, vname = store_ollama_model(store, doc, names)
    result.local_digest = index_desc.digest
    result.variants = [vname]
    result.tags = [str(n) for n in names]
    progress(ProgressEvent("success", index_desc.digest, title=str(top.r)))
    return result


def _check_media_types(top: _Top) -> None:
    """An index of image manifests, or an image manifest, each by its OCI media type."""
    r, doc = top.r, top.doc
    if isinstance(doc, Manifest):
        if top.media_type not in MANIFEST_TYPES:
            raise ArtifactError(f"{r}: unexpected media type {top.media_type!r}")
        return
    if top.media_type not in INDEX_TYPES:
        raise ArtifactError(f"{r}: unexpected media type {top.media_type!r} for an index")
    for d in doc.manifests:
        if d.media_type not in MANIFEST_TYPES:
            raise ArtifactError(f"{r}: index entry {d.digest[:19]} is {d.media_type}, not a manifest")


def _variant_manifests(top: _Top, chosen: list[VariantRef]) -> _Fetched:
    """The manifests to store: each chosen entry of an index (read and checked), or the top manifest."""
    r, doc = top.r, top.doc
    if isinstance(doc, Manifest):
        check_variant(doc, str(r))
        v = VariantRef(Descriptor(media_type=OCI_MANIFEST, digest=top.digest, size=len(top.data),
                                  annotations=doc.annotations))
        return [(v, top.data, doc)]
    fetched: _Fetched = []
    for v in chosen:
        data, _, digest = get_manifest(top.cl, top.repo, v.descriptor.digest)
        if len(data) != v.descriptor.size:
            raise ArtifactError(
                f"{r}: manifest {digest} is {len(data)} bytes, the index says {v.descriptor.size}"
            )
        m = parse_manifest(data)
        if not isinstance(m, Manifest):
            raise ArtifactError(f"{r}: variant {v.name} is not an image manifest")
        check_variant(m, f"{r} variant {v.name}")
        fetched.append((v, data, m))
    return fetched


def _store_pulled(
    top: _Top, fetched: _Fetched, store: Store, names: list[Reference], tag: str, result: PullResult
) -> None:
    """The manifests (their blobs already stored) and the tags: each name, and each variant's own tag."""
    for v, data, _ in fetched:
        digest, _size = store.add_bytes(data)
        if digest != v.descriptor.digest:
            raise RemoteError(f"{top.r}: manifest digest changed while storing ({digest})")
    store.add_bytes(top.data)
    top_desc = Descriptor(media_type=top.media_type, digest=top.digest, size=len(top.data))
    if isinstance(top.doc, Index):
        top_desc = top_desc.model_copy(update={"artifact_type": top.doc.artifact_type})
    else:
        top_desc = top_desc.model_copy(update={"annotations": top.doc.annotations})
    for n in names:
        ntag: str = n.tag or tag
        if isinstance(top.doc, Index):
            for v, _, _ in fetched:
                entry_name = v.annotations.get(ANN_VARIANT)
                if entry_name:
                    vref = n.with_tag(variant_tag(ntag, entry_name))
                    store.tag(vref, v.descriptor)
                    result.tags.append(str(vref))
        store.tag(n.with_tag(ntag), top_desc)
        result.tags.insert(0, str(n.with_tag(ntag)))
    result.variants = [v.name for v, _, _ in fetched]
