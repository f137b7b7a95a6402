"""Signatures in cosign's key-based format, so ``cosign verify --key`` and ``ff verify --key`` agree.

What is signed is cosign's *simple signing* payload naming the repository and the manifest (or index)
digest; the signature is ECDSA P-256 over SHA-256 of the payload bytes, ASN.1 DER, base64. It is
stored where cosign looks: an OCI image manifest tagged ``sha256-<hex>.sig`` in the same repository,
one layer per signature (media type ``application/vnd.dev.cosign.simplesigning.v1+json``, the payload
as the blob, the signature in the layer annotation ``dev.cosignproject.cosign/signature``). A second
signature adds a layer to the same manifest, as cosign does.

Keys: public keys are PEM ``PUBLIC KEY`` (cosign's ``cosign.pub`` is exactly that); private keys are
cosign's own ``ENCRYPTED SIGSTORE PRIVATE KEY`` (scrypt + NaCl secretbox, needs PyNaCl) or plain PEM
(PKCS#8, SEC1, optionally password-encrypted). A key argument is a file path or ``env://NAME`` (the
PEM text in an environment variable, as cosign accepts); the password comes from ``COSIGN_PASSWORD``.

Policy (:func:`required_key`): ``FF_VERIFY_KEY`` names the public key every pull verifies against, and
``FF_REQUIRE_SIGNATURE=1`` refuses any pull that has no key to verify with.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.errors import SignatureError as SignatureError
from registry.http import RegistryClient, RegistryError
from registry.oci import OCI_MANIFEST, canonical_json
from registry.smallblobs import fetch_bytes, upload_bytes
from registry.transfer import find_manifest, put_manifest, sha256_digest

SIMPLESIGNING: str = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION: str = "dev.cosignproject.cosign/signature"
OCI_CONFIG: str = "application/vnd.oci.image.config.v1+json"
PAYLOAD_TYPE: str = "cosign container image signature"
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_SIGNATURES = 64
"""A signature manifest with more layers than this is refused (no one signs an artifact 64 times)."""


class KeyFormatError(ValueError):
    """A key cannot be read (wrong format, wrong password, not ECDSA P-256)."""


# --- keys ----------------------------------------------------------------------------------------------
def _key_bytes(spec: str) -> bytes:
    if spec.startswith("env://"):
        name = spec[len("env://"):]
        value = os.environ.get(name)
        if not value:
            raise KeyFormatError(f"key {spec}: environment variable {name} is not set")
        return value.encode()
    path = Path(spec).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFormatError(f"cannot read key {spec}: {exc.strerror or exc}") from None


def _cosign_private(pem: bytes, password: bytes) -> bytes:
    """The PKCS#8 DER inside cosign's ``ENCRYPTED SIGSTORE PRIVATE KEY`` (scrypt KDF, NaCl secretbox)."""
    import hashlib

    lines = [ln for ln in pem.decode("ascii", "replace").splitlines() if ln and not ln.startswith("-----")]
    try:
        doc = json.loads(base64.b64decode("".join(lines)))
        kdf, cipher = doc["kdf"], doc["cipher"]
        if kdf["name"] != "scrypt" or cipher["name"] != "nacl/secretbox":
            raise KeyFormatError(f"cosign key uses {kdf['name']}/{cipher['name']}, not scrypt/nacl/secretbox")
        params = kdf["params"]
        salt = base64.b64decode(kdf["salt"])
        nonce = base64.b64decode(cipher["nonce"])
        box = base64.b64decode(doc["ciphertext"])
        n, r, p = int(params["N"]), int(params["r"]), int(params["p"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise KeyFormatError(f"not a cosign private key: {exc}") from None
    try:
        import nacl.exceptions
        import nacl.secret
    except ImportError:
        raise KeyFormatError(
            "cosign-format private keys need PyNaCl: pip install 'ferrousforge[sign]' (or give a PEM key)"
        ) from None
    secret = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32, maxmem=256 * 1024 * 1024)
    try:
        return bytes(nacl.secret.SecretBox(secret).decrypt(box, nonce))
    except nacl.exceptions.CryptoError:
        raise KeyFormatError("wrong password for the cosign private key (COSIGN_PASSWORD)") from None


def _password() -> bytes:
    return os.environ.get("COSIGN_PASSWORD", "").encode()


def _p256(key: object, spec: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(curve, ec.SECP256R1):
        raise KeyFormatError(f"key {spec} is not ECDSA P-256 (cosign's key-based signatures use P-256)")


def load_private_key(spec: str) -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 private key from ``spec`` (path or ``env://NAME``); password from COSIGN_PASSWORD."""
    data = _key_bytes(spec)
    if b"ENCRYPTED SIGSTORE PRIVATE KEY" in data or b"ENCRYPTED COSIGN PRIVATE KEY" in data:
        der = _cosign_private(data, _password())
        key = serialization.load_der_private_key(der, password=None)
    else:
        pw = _password() if b"ENCRYPTED" in data else None
        try:
            key = serialization.load_pem_private_key(data, password=pw or None)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"cannot read private key {spec}: {exc}") from None
    _p256(key, spec)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public_key(spec: str) -> ec.EllipticCurvePublicKey:
    """An ECDSA P-256 public key from ``spec``: PEM ``PUBLIC KEY`` (cosign.pub), or a private key's."""
    data = _key_bytes(spec)
    if b"PRIVATE KEY" in data:
        return load_private_key(spec).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise KeyFormatError(f"cannot read public key {spec}: {exc}") from None
    _p256(key, spec)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- payload and signature manifest ------------------------------------------------------------------
def signature_tag(digest: str) -> str:
    """Where cosign keeps the signatures of ``digest``: the tag ``sha256-<hex>.sig``."""
    algo, _, hexd = digest.partition(":")
    return f"{algo}-{hexd}.sig"


def simple_signing_payload(docker_reference: str, digest: str) -> bytes:
    """cosign's payload, in the key order cosign writes it."""
    body = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def sign_payload(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def _config_blob(layer_digests: list[str]) -> bytes:
    """The image config cosign writes for a signature manifest (zero times, the payloads as diff_ids)."""
    zero = "0001-01-01T00:00:00Z"
    return canonical_json({
        "architecture": "", "os": "", "created": zero, "history": [{"created": zero}], "config": {},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    })


def _existing_layers(client: RegistryClient, repo: str, tag: str) -> list[dict[str, object]]:
    found = find_manifest(client, repo, tag)
    if found is None:
        return []
    try:
        layers = json.loads(found[0]).get("layers")
    except (ValueError, AttributeError):
        return []
    return [d for d in layers if isinstance(d, dict)] if isinstance(layers, list) else []


@dataclass
class SignResult:
    reference: str
    digest: str
    signature_tag: str
    signature_manifest: str
    signatures: int


def sign(
    client: RegistryClient, repo: str, docker_reference: str, digest: str, key: ec.EllipticCurvePrivateKey
) -> SignResult:
    """Sign ``repo@digest`` and store the signature under ``sha256-<hex>.sig`` (added to any there)."""
    payload = simple_signing_payload(docker_reference, digest)
    sig = sign_payload(key, payload)
    tag = signature_tag(digest)
    layers = _existing_layers(client, repo, tag)
    pdesc = upload_bytes(client, repo, payload, SIMPLESIGNING)
    entry = {**pdesc.wire(), "annotations": {SIGNATURE_ANNOTATION: sig}}
    pub = key.public_key()  # signing again with the same key replaces that key's signature
    kept = [d for d in layers if d.get("digest") != pdesc.digest or not _verifies(pub, d, payload)]
    layers = [*kept, entry]
    cdesc = upload_bytes(client, repo, _config_blob([str(d.get("digest")) for d in layers]), OCI_CONFIG)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc.wire(), "layers": layers,
    })
    put_manifest(client, repo, tag, manifest, OCI_MANIFEST)
    return SignResult(docker_reference, digest, tag, sha256_digest(manifest), len(layers))


def _verifies(pub: ec.EllipticCurvePublicKey, layer: dict[str, object], payload: bytes) -> bool:
    ann = layer.get("annotations")
    sig = ann.get(SIGNATURE_ANNOTATION) if isinstance(ann, dict) else None
    if not isinstance(sig, str):
        return False
    try:
        pub.verify(base64.b64decode(sig, validate=True), payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


# --- verification ------------------------------------------------------------------------------------
@dataclass
class Verified:
    digest: str
    docker_reference: str
    signature: str
    signatures_checked: int


def _payload_digest(payload: bytes) -> tuple[str, str]:
    """(docker-manifest-digest, docker-reference) from a simple-signing payload, or SignatureError."""
    try:
        body = json.loads(payload)
        critical = body["critical"]
        if critical["type"] != PAYLOAD_TYPE:
            raise SignatureError(f"signature payload type is {critical['type']!r}, not {PAYLOAD_TYPE!r}")
        return str(critical["image"]["docker-manifest-digest"]), str(critical["identity"]["docker-reference"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"signature payload is not cosign's simple signing format: {exc}") from None


def verify(client: RegistryClient, repo: str, digest: str, key: ec.EllipticCurvePublicKey) -> Verified:
    """Check that ``repo@digest`` carries a signature by ``key`` over a payload naming ``digest``.

    Reads only the ``.sig`` manifest and its payload blobs (small, size-capped) into memory; nothing is
    written. Raises :class:`SignatureError` when there is no signature, none verifies with ``key``, or
    the one that verifies names another digest.
    """
    where = f"{client.host}/{repo}@{digest}"
    layers = _existing_layers(client, repo, signature_tag(digest))
    if not layers:
        raise SignatureError(f"{where} is not signed (no {signature_tag(digest)} signature manifest)")
    if len(layers) > MAX_SIGNATURES:
        raise SignatureError(f"{where}: the signature manifest holds {len(layers)} signatures, over the cap")
    checked = 0
    for layer in layers:
        if layer.get("mediaType") != SIMPLESIGNING:
            continue
        size, pdigest = layer.get("size"), layer.get("digest")
        if not isinstance(size, int) or not isinstance(pdigest, str) or size > MAX_PAYLOAD_BYTES:
            continue
        try:
            payload = fetch_bytes(client, repo, pdigest, size, MAX_PAYLOAD_BYTES)
        except RegistryError as exc:
            raise SignatureError(f"{where}: signature payload {pdigest}: {exc}") from None
        checked += 1
        if not _verifies(key, layer, payload):
            continue
        signed_digest, ref = _payload_digest(payload)
        if signed_digest != digest:
            raise SignatureError(f"{where}: the signature by this key is for {signed_digest}, not this one")
        ann = layer.get("annotations")
        sig = str(ann.get(SIGNATURE_ANNOTATION)) if isinstance(ann, dict) else ""
        return Verified(digest, ref, sig, checked)
    raise SignatureError(
        f"{where}: none of its {checked} signature(s) verifies with the given key "
        "(signed by another key, or tampered with)"
    )


# --- policy --------------------------------------------------------------------------------------------
def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def required_key(verify_key: str | None = None) -> ec.EllipticCurvePublicKey | None:
    """The public key a pull must verify against: ``verify_key``, else ``$FF_VERIFY_KEY``; None if
    neither is given. With ``FF_REQUIRE_SIGNATURE=1`` and no key, a :class:`SignatureError`."""
    spec = verify_key or os.environ.get("FF_VERIFY_KEY") or None
    if spec is None:
        if _truthy(os.environ.get("FF_REQUIRE_SIGNATURE")):
            raise SignatureError(
                "FF_REQUIRE_SIGNATURE is set but no key to verify with: give --verify-key or FF_VERIFY_KEY"
            )
        return None
    try:
        return load_public_key(spec)
    except KeyFormatError as exc:
        raise SignatureError(str(exc)) from None
