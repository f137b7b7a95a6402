"""An SPDX 2.3 SBOM of a pushed model, attached to its index as an OCI 1.1 referrer.

The document is built from what the registry holds (the index, every variant manifest and config, and
the license files), so it describes exactly what a later pull gets: one SPDX package for the model,
one per variant, and one SPDX file per layer with the layer's sha256 as its checksum; the source
revision (``--revision``, else the ``org.opencontainers.image.revision`` LABEL, else the ModelPack
``descriptor.revision``) and the licenses (the ModelPack ``descriptor.licenses``, else the LICENSE
files; an SPDX identifier when the text is one, a ``LicenseRef-`` with the text otherwise).

Attaching: an image manifest with ``artifactType: application/spdx+json``, the OCI empty config, the
SBOM as its one layer and ``subject`` = the index. A registry with the referrers API answers the PUT
with ``OCI-Subject``; for one without (distribution 2.8), the referrers *tag schema* is kept up to date
as the OCI 1.1 distribution spec says: an index tagged ``sha256-<hex>`` listing the referrers.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from registry.artifact import parse_manifest
from registry.http import RegistryClient, RegistryError, iter_body
from registry.oci import (
    ANN_VARIANT,
    ANNOTATION_CREATED,
    ANNOTATION_FILEPATH,
    MAX_MANIFEST_BYTES,
    MODEL_DOC,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    canonical_json,
)
from registry.smallblobs import fetch_bytes, upload_bytes
from registry.store import Store
from registry.transfer import find_manifest, get_manifest, put_manifest, sha256_digest

SPDX_JSON = "application/spdx+json"
ANN_REVISION = "org.opencontainers.image.revision"
ANN_SOURCE = "org.opencontainers.image.source"
MAX_LICENSE_BYTES = 1024 * 1024
EMPTY_JSON = b"{}"
_SPDX_ID = re.compile(r"^[A-Za-z0-9.+-]+(?: (?:AND|OR|WITH) [A-Za-z0-9.+-]+)*$")


class SBOMError(RegistryError):
    """An SBOM cannot be made, attached or found."""


@dataclass
class LayerFact:
    variant: str
    filepath: str
    media_type: str
    digest: str
    size: int
    sha1: str = ""  # SPDX requires a SHA1 per file: hashed from the local store, else streamed


def _sha1(client: RegistryClient, repo: str, d: Descriptor, store: Store | None) -> str:
    """SHA1 of a layer: from the local store's copy if there is one, else streamed from the registry
    (nothing is kept; the sha256 is checked on the way)."""
    h1, h256 = hashlib.sha1(usedforsecurity=False), hashlib.sha256()
    if store is not None and store.has_blob(d.digest):
        with open(store.blob_path(d.digest), "rb") as f:
            while chunk := f.read(1 << 20):
                h1.update(chunk)
        return h1.hexdigest()
    resp = client.do_request(client.url(f"/v2/{repo}/blobs/{d.digest}"), "GET", stream=True)
    client.check(resp, 200, what=f"GET blob {d.digest}")
    with resp:
        for chunk in iter_body(resp, 1 << 20):
            h1.update(chunk)
            h256.update(chunk)
    if "sha256:" + h256.hexdigest() != d.digest:
        raise SBOMError(f"layer {d.digest} from {client.host} does not match its digest")
    return h1.hexdigest()


@dataclass
class ModelFacts:
    reference: str
    digest: str
    variants: dict[str, str] = field(default_factory=dict)  # variant name → manifest digest
    layers: list[LayerFact] = field(default_factory=list)
    revisions: list[str] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    source: str | None = None


def _manifests(client: RegistryClient, repo: str, digest: str) -> list[tuple[str, str, Manifest]]:
    data, _, got = get_manifest(client, repo, digest)
    doc = parse_manifest(data)
    if isinstance(doc, Manifest):
        return [((doc.annotations or {}).get(ANN_VARIANT, got[7:19]), got, doc)]
    out = []
    for d in doc.manifests:
        m = parse_manifest(get_manifest(client, repo, d.digest)[0])
        if not isinstance(m, Manifest):
            raise SBOMError(f"{repo}@{digest}: nested index {d.digest} is not supported")
        out.append(((d.annotations or {}).get(ANN_VARIANT, d.digest[7:19]), d.digest, m))
    return out


def collect(
    client: RegistryClient, repo: str, digest: str, reference: str, store: Store | None = None
) -> ModelFacts:
    """Everything the SBOM says, read from the registry (manifests, configs, license files); layer
    SHA1s from ``store`` where it holds the blobs (as right after ``ff push``)."""
    facts = ModelFacts(reference=reference, digest=digest)
    sha1s: dict[str, str] = {}
    for name, mdigest, m in _manifests(client, repo, digest):
        facts.variants[name] = mdigest
        ann = m.annotations or {}
        if ann.get(ANN_REVISION):
            facts.revisions.append(ann[ANN_REVISION])
        facts.source = facts.source or ann.get(ANN_SOURCE)
        if m.config.size <= MAX_MANIFEST_BYTES:
            try:
                raw = fetch_bytes(client, repo, m.config.digest, m.config.size, MAX_MANIFEST_BYTES)
                cfg = json.loads(raw)
            except ValueError:
                cfg = {}
            desc = cfg.get("descriptor") if isinstance(cfg, dict) else None
            if isinstance(desc, dict):
                if isinstance(desc.get("revision"), str):
                    facts.revisions.append(desc["revision"])
                lic = desc.get("licenses")
                if isinstance(lic, list):
                    facts.licenses += [str(x) for x in lic]
        for d in m.layers:
            path = (d.annotations or {}).get(ANNOTATION_FILEPATH, d.digest[7:19])
            if d.digest not in sha1s:
                sha1s[d.digest] = _sha1(client, repo, d, store)
            facts.layers.append(LayerFact(name, path, d.media_type, d.digest, d.size, sha1s[d.digest]))
            is_license = d.media_type == MODEL_DOC and path.upper().startswith("LICENSE")
            if is_license and d.size <= MAX_LICENSE_BYTES:
                raw = fetch_bytes(client, repo, d.digest, d.size, MAX_LICENSE_BYTES)
                text = raw.decode("utf-8", "replace")
                if text.strip():
                    facts.licenses.append(text.strip())
    facts.revisions = list(dict.fromkeys(facts.revisions))
    facts.licenses = list(dict.fromkeys(facts.licenses))
    return facts


def _purl(reference: str, digest: str) -> str:
    """The package URL of an OCI artifact: ``pkg:oci/<name>@sha256%3A…?repository_url=<host/repo>``."""
    from urllib.parse import quote

    repo = reference.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:  # a tag
        repo = repo[: -len(last)] + last.split(":", 1)[0]
    name = repo.rsplit("/", 1)[-1]
    return f"pkg:oci/{name}@{quote(digest, safe='')}?repository_url={quote(repo, safe='/:')}"


def _spdx_ref(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "-", text)[:200]


def spdx_document(facts: ModelFacts, *, revision: str | None = None, created: str) -> dict[str, object]:
    """The SPDX 2.3 JSON document for ``facts`` (``created``: an ISO 8601 UTC time)."""
    rev = revision or (facts.revisions[0] if facts.revisions else None)
    extracted: list[dict[str, object]] = []
    ids: list[str] = []
    for i, text in enumerate(facts.licenses, 1):
        if _SPDX_ID.match(text) and len(text) < 100:
            ids.append(text)
        else:
            ref = f"LicenseRef-ff-{i}"
            extracted.append({"licenseId": ref, "extractedText": text, "name": f"LICENSE {i}"})
            ids.append(ref)
    declared = " AND ".join(ids) if ids else "NOASSERTION"
    model_id = "SPDXRef-Package-model"
    model: dict[str, object] = {
        "SPDXID": model_id,
        "name": facts.reference,
        "downloadLocation": "NOASSERTION",  # SPDX 2.3 has no oci:// locations: the purl below says where
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": declared,
        "copyrightText": "NOASSERTION",
        "checksums": [{"algorithm": "SHA256", "checksumValue": facts.digest.split(":", 1)[1]}],
        "primaryPackagePurpose": "OTHER",
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
            "referenceLocator": _purl(facts.reference, facts.digest),
        }],
    }
    if rev:
        model["versionInfo"] = rev
        of = f" of {facts.source}" if facts.source else ""
        model["sourceInfo"] = f"built from source revision {rev}{of}"
    packages: list[dict[str, object]] = [model]
    files: list[dict[str, object]] = []
    rels: list[dict[str, str]] = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": model_id}
    ]
    seen_files: set[str] = set()
    for name, mdigest in facts.variants.items():
        pid = f"SPDXRef-Package-variant-{_spdx_ref(name)}"
        packages.append({
            "SPDXID": pid, "name": f"{facts.reference} variant {name}", "downloadLocation": "NOASSERTION",
            "filesAnalyzed": True, "licenseConcluded": "NOASSERTION", "licenseDeclared": declared,
            "copyrightText": "NOASSERTION",
            "checksums": [{"algorithm": "SHA256", "checksumValue": mdigest.split(":", 1)[1]}],
            "packageVerificationCode": {"packageVerificationCodeValue": _verification_code(facts, name)},
        })
        rels.append({"spdxElementId": model_id, "relationshipType": "CONTAINS", "relatedSpdxElement": pid})
        for lf in (x for x in facts.layers if x.variant == name):
            fid = f"SPDXRef-File-{lf.digest[7:23]}-{_spdx_ref(lf.filepath)}"
            if fid not in seen_files:
                seen_files.add(fid)
                files.append({
                    "SPDXID": fid, "fileName": f"./{lf.filepath}",
                    "checksums": [{"algorithm": "SHA256", "checksumValue": lf.digest.split(":", 1)[1]},
                                  {"algorithm": "SHA1", "checksumValue": lf.sha1}],
                    "licenseConcluded": "NOASSERTION", "copyrightText": "NOASSERTION",
                    "comment": f"OCI layer {lf.digest} ({lf.media_type}, {lf.size} bytes)",
                })
            rels.append({"spdxElementId": pid, "relationshipType": "CONTAINS", "relatedSpdxElement": fid})
    doc: dict[str, object] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"sbom-{facts.reference}",
        "documentNamespace": f"https://ferrousforge.invalid/spdx/{_spdx_ref(facts.reference)}/{facts.digest}",
        "creationInfo": {"created": created, "creators": ["Tool: ferrousforge"]},
        "packages": packages,
        "files": files,
        "relationships": rels,
    }
    if extracted:
        doc["hasExtractedLicensingInfos"] = extracted
    return doc


def _verification_code(facts: ModelFacts, variant: str) -> str:
    """SPDX's package verification code: SHA1 of the variant's sorted file SHA1s, concatenated."""
    digs = sorted(x.sha1 for x in facts.layers if x.variant == variant)
    return hashlib.sha1("".join(digs).encode(), usedforsecurity=False).hexdigest()


# --- referrers -----------------------------------------------------------------------------------------
def referrers_tag(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    return f"{algo}-{hexd}"


@dataclass
class AttachResult:
    manifest: str
    via: str  # "referrers" (the registry's referrers API) or "tag" (the sha256-<hex> fallback index)
    sbom_digest: str


def attach(client: RegistryClient, repo: str, subject: Descriptor, sbom: bytes, created: str) -> AttachResult:
    """Push ``sbom`` as a referrer of ``subject`` (see the module docstring); return where it went."""
    blob = upload_bytes(client, repo, sbom, SPDX_JSON)
    empty = upload_bytes(client, repo, EMPTY_JSON, OCI_EMPTY)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SPDX_JSON,
        "config": empty.wire(), "layers": [blob.wire()],
        "subject": {"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size},
        "annotations": {ANNOTATION_CREATED: created},
    })
    mdigest = sha256_digest(manifest)
    resp = client.do_request(
        client.url(f"/v2/{repo}/manifests/{mdigest}"), "PUT", data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    client.check(resp, 200, 201, what=f"PUT SBOM manifest {repo}@{mdigest}")
    has_api = resp.headers.get("OCI-Subject") == subject.digest
    resp.close()
    if has_api:
        return AttachResult(mdigest, "referrers", blob.digest)
    entry = {"mediaType": OCI_MANIFEST, "digest": mdigest, "size": len(manifest), "artifactType": SPDX_JSON,
             "annotations": {ANNOTATION_CREATED: created}}
    tag = referrers_tag(subject.digest)
    entries = [e for e in _tag_index(client, repo, tag) if e.get("digest") != mdigest]
    index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, entry]})
    put_manifest(client, repo, tag, index, OCI_INDEX)
    return AttachResult(mdigest, "tag", blob.digest)


def _tag_index(client: RegistryClient, repo: str, tag: str) -> list[dict[str, object]]:
    found = find_manifest(client, repo, tag)
    if found is None:
        return []
    doc = parse_manifest(found[0])
    if not isinstance(doc, Index):
        raise SBOMError(f"{repo}:{tag} is not a referrers index; refusing to overwrite it")
    return [d.wire() for d in doc.manifests]


def referrers(
    client: RegistryClient, repo: str, digest: str, artifact_type: str = SPDX_JSON
) -> list[Descriptor]:
    """The referrers of ``digest`` with ``artifact_type``: the referrers API, else the tag schema."""
    resp = client.do_request(
        client.url(f"/v2/{repo}/referrers/{digest}"), "GET", headers={"Accept": OCI_INDEX}, stream=True
    )
    if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(OCI_INDEX):
        doc = parse_manifest(client.read_bounded(resp, MAX_MANIFEST_BYTES))
        entries = [d.wire() for d in doc.manifests] if isinstance(doc, Index) else []
    else:
        resp.close()
        entries = _tag_index(client, repo, referrers_tag(digest))
    out = [Descriptor.model_validate(e) for e in entries]
    return [d for d in out if d.artifact_type == artifact_type]


def fetch(client: RegistryClient, repo: str, digest: str) -> dict[str, object]:
    """The newest SBOM attached to ``repo@digest`` (checked against its digests), as JSON."""
    found = referrers(client, repo, digest)
    if not found:
        raise SBOMError(f"{client.host}/{repo}@{digest} has no SBOM attached")
    best = max(found, key=lambda d: (d.annotations or {}).get(ANNOTATION_CREATED, ""))
    m = parse_manifest(get_manifest(client, repo, best.digest)[0])
    if not isinstance(m, Manifest) or not m.layers:
        raise SBOMError(f"SBOM manifest {best.digest} has no layer")
    subject = getattr(m, "subject", None) or (m.model_extra or {}).get("subject")
    if not isinstance(subject, dict) or subject.get("digest") != digest:
        raise SBOMError(f"SBOM manifest {best.digest} is not about {digest}")
    layer = m.layers[0]
    obj = json.loads(fetch_bytes(client, repo, layer.digest, layer.size, MAX_MANIFEST_BYTES))
    if not isinstance(obj, dict):
        raise SBOMError(f"SBOM {layer.digest} is not a JSON object")
    return obj
