"""ff sign / ff verify / ff pull --verify-key / ff sbom against docker-registry with htpasswd auth.

Signatures are checked here with ``cryptography`` directly from the registry's bytes (the .sig
manifest, its payload blob), independently of registry.signing; refusals leave nothing in the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from remote_testkit import PASSWORD, USER, RegistryServer, make_model

from ffcli import main
from registry.remote import push
from registry.store import Store

pytestmark = pytest.mark.registry
KEY_PASSWORD = "key-pass-123"


def _keypair(root: Path, name: str) -> tuple[Path, Path, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = root / f"{name}.key", root / f"{name}.pub"
    priv.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
    ))
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    return priv, pub, key


@pytest.fixture
def env(auth_registry: RegistryServer, docker_config: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials the way a pipeline passes them: FF_REGISTRY_* from its secrets, never on a command line."""
    values = {
        "FF_REGISTRY_HOST": auth_registry.host, "FF_REGISTRY_USERNAME": USER,
        "FF_REGISTRY_PASSWORD": PASSWORD, "COSIGN_PASSWORD": KEY_PASSWORD, "FF_HOME": str(tmp_path / "ff"),
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    for k in ("FF_VERIFY_KEY", "FF_REQUIRE_SIGNATURE", "FF_SIGNING_KEY"):
        monkeypatch.delenv(k, raising=False)
    return values


@pytest.fixture
def pushed(env: dict[str, str], auth_registry: RegistryServer, smollm2_gguf: Path,
           tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(remote ref, index digest) of the two-variant SmolLM2 model pushed to a fresh repository."""
    src = Store(tmp_path / "src")
    digest = make_model(src, smollm2_gguf)
    ref = f"{auth_registry.host}/sign/{request.node.name.replace('_', '-')[:40]}:1"
    push("smollm2:1", store=src, remote_ref=ref)
    yield ref, digest


def ff(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def _get(host: str, path: str, accept: str = "") -> requests.Response:
    r = requests.get(f"http://{host}{path}", auth=(USER, PASSWORD), timeout=10,
                     headers={"Accept": accept} if accept else {})
    r.raise_for_status()
    return r


def _store_is_empty(home: str) -> None:
    store = Store(Path(home) / "store")
    assert store.tags() == []
    blobs = list((Path(home) / "store" / "blobs").rglob("*"))
    assert [b for b in blobs if b.is_file()] == [], blobs
    ingest = Path(home) / "store" / "ingest"
    assert not ingest.exists() or not any(ingest.iterdir())


def _independent_verify(host: str, repo: str, digest: str, pub: ec.EllipticCurvePublicKey) -> int:
    """Verify the cosign signature from the registry's bytes with cryptography only; return the count."""
    tag = "sha256-" + digest.split(":")[1] + ".sig"
    m = _get(host, f"/v2/{repo}/manifests/{tag}", "application/vnd.oci.image.manifest.v1+json").json()
    good = 0
    for layer in m["layers"]:
        assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
        payload = _get(host, f"/v2/{repo}/blobs/{layer['digest']}").content
        assert "sha256:" + hashlib.sha256(payload).hexdigest() == layer["digest"]
        body = json.loads(payload)
        assert body["critical"]["type"] == "cosign container image signature"
        assert body["critical"]["image"]["docker-manifest-digest"] == digest
        assert body["critical"]["identity"]["docker-reference"] == f"{host}/{repo}"
        sig = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
        try:
            pub.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
            good += 1
        except InvalidSignature:
            pass
    return good


def test_sign_verify_and_pull_with_key(pushed: tuple[str, str], env: dict[str, str], tmp_path: Path,
                                       auth_registry: RegistryServer) -> None:
    ref, digest = pushed
    priv, pub, key = _keypair(tmp_path, "cosign")
    _, other_pub, _ = _keypair(tmp_path, "other")
    host, repo = auth_registry.host, ref.split("/", 1)[1].rsplit(":", 1)[0]

    out = ff("verify", ref, "--key", str(pub))
    assert out.exit_code == 6 and "is not signed" in out.output, out.output
    out = ff("sign", ref, "--key", str(priv), "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["digest"] == digest
    assert _independent_verify(host, repo, digest, key.public_key()) == 1

    out = ff("verify", ref, "--key", str(pub), "--json")
    assert out.exit_code == 0 and json.loads(out.output)["digest"] == digest, out.output
    out = ff("verify", ref, "--key", str(other_pub))
    assert out.exit_code == 6 and "none of its 1 signature(s) verifies" in out.output, out.output

    out = ff("pull", ref, "--verify-key", str(other_pub), "-q")
    assert out.exit_code == 6, out.output
    _store_is_empty(env["FF_HOME"])

    out = ff("pull", ref, "--verify-key", str(pub), "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert result["digest"] == digest and result["signed_by_key"] is True
    assert Store(Path(env["FF_HOME"]) / "store").resolve(ref).digest == digest

    # a second key adds a second signature; each verifies independently
    priv2 = tmp_path / "other.key"
    assert ff("sign", ref, "--key", str(priv2)).exit_code == 0
    assert _independent_verify(host, repo, digest, key.public_key()) == 1
    assert ff("verify", ref, "--key", str(other_pub)).exit_code == 0


def test_unsigned_and_tampered_are_refused(pushed: tuple[str, str], env: dict[str, str], tmp_path: Path,
                                           auth_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    ref, digest = pushed
    priv, pub, key = _keypair(tmp_path, "cosign")
    host, repo = auth_registry.host, ref.split("/", 1)[1].rsplit(":", 1)[0]

    out = ff("pull", ref, "--verify-key", str(pub), "-q")  # unsigned
    assert out.exit_code == 6 and "is not signed" in out.output, out.output
    _store_is_empty(env["FF_HOME"])
    monkeypatch.setenv("FF_REQUIRE_SIGNATURE", "1")  # policy without a key: refused, not ignored
    out = ff("pull", ref, "-q")
    assert out.exit_code == 6 and "FF_REQUIRE_SIGNATURE" in out.output, out.output
    _store_is_empty(env["FF_HOME"])

    assert ff("sign", ref, "--key", str(priv)).exit_code == 0
    tag = "sha256-" + digest.split(":")[1] + ".sig"
    mt = "application/vnd.oci.image.manifest.v1+json"
    m = _get(host, f"/v2/{repo}/manifests/{tag}", mt).json()
    sig = bytearray(base64.b64decode(m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"]))
    sig[-3] ^= 0x01  # one flipped bit in the signature
    m["layers"][0]["annotations"]["dev.cosignproject.cosign/signature"] = base64.b64encode(sig).decode()
    r = requests.put(f"http://{host}/v2/{repo}/manifests/{tag}", data=json.dumps(m), auth=(USER, PASSWORD),
                     headers={"Content-Type": mt}, timeout=10)
    assert r.status_code == 201, r.text
    assert _independent_verify(host, repo, digest, key.public_key()) == 0

    monkeypatch.setenv("FF_VERIFY_KEY", str(pub))  # the policy as a server or pipeline sets it
    out = ff("pull", ref, "-q")
    assert out.exit_code == 6 and "verifies with the given key" in out.output, out.output
    _store_is_empty(env["FF_HOME"])


def test_cosign_format_private_key(pushed: tuple[str, str], env: dict[str, str], tmp_path: Path,
                                   auth_registry: RegistryServer) -> None:
    """A key in cosign's own format (ENCRYPTED SIGSTORE PRIVATE KEY: scrypt + NaCl secretbox), made here
    with PyNaCl following cosign's layout, given as env://VAR as pipelines pass it."""
    import nacl.secret
    import nacl.utils

    ref, digest = pushed
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    salt, nonce = os.urandom(32), nacl.utils.random(24)
    secret = hashlib.scrypt(KEY_PASSWORD.encode(), salt=salt, n=32768, r=8, p=1, dklen=32, maxmem=2**26)
    box = nacl.secret.SecretBox(secret).encrypt(der, nonce).ciphertext
    doc = {"kdf": {"name": "scrypt", "params": {"N": 32768, "r": 8, "p": 1},
                   "salt": base64.b64encode(salt).decode()},
           "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
           "ciphertext": base64.b64encode(box).decode()}
    b64 = base64.b64encode(json.dumps(doc).encode()).decode()
    pem = "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    pem += "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))
    pem += "\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n"
    os.environ["COSIGN_KEY"] = pem
    try:
        assert ff("sign", ref, "--key", "env://COSIGN_KEY").exit_code == 0
        os.environ["COSIGN_PASSWORD"] = "wrong"
        out = ff("sign", ref, "--key", "env://COSIGN_KEY")
        assert out.exit_code == 6 and "wrong password" in out.output, out.output
    finally:
        del os.environ["COSIGN_KEY"]
        os.environ["COSIGN_PASSWORD"] = KEY_PASSWORD
    host, repo = auth_registry.host, ref.split("/", 1)[1].rsplit(":", 1)[0]
    assert _independent_verify(host, repo, digest, key.public_key()) == 1


def _spdx_valid(doc: dict[str, object], tmp: Path) -> None:
    """The SBOM is valid SPDX 2.3 by spdx-tools, the SPDX project's own parser and validator."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    path = tmp / "sbom.spdx.json"
    path.write_text(json.dumps(doc))
    messages = validate_full_spdx_document(parse_file(str(path)))
    assert messages == [], "\n".join(m.validation_message for m in messages)


def test_sbom_lists_every_layer(pushed: tuple[str, str], env: dict[str, str],
                                auth_registry: RegistryServer, tmp_path: Path) -> None:
    ref, digest = pushed
    host, repo = auth_registry.host, ref.split("/", 1)[1].rsplit(":", 1)[0]
    out = ff("sbom", ref, "--attach", "--revision", "0123abc")
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["via"] == "tag"  # distribution 2.8 has no referrers API: the sha256-<hex> fallback
    # read it back as any OCI 1.1 client would: the fallback tag's index → the manifest → the SBOM blob
    idx = _get(host, f"/v2/{repo}/manifests/sha256-{digest.split(':')[1]}",
               "application/vnd.oci.image.index.v1+json").json()
    entry = next(e for e in idx["manifests"] if e.get("artifactType") == "application/spdx+json")
    m = _get(host, f"/v2/{repo}/manifests/{entry['digest']}", "application/vnd.oci.image.manifest.v1+json")
    manifest = m.json()
    assert manifest["subject"]["digest"] == digest
    sbom = _get(host, f"/v2/{repo}/blobs/{manifest['layers'][0]['digest']}").json()
    assert sbom["spdxVersion"] == "SPDX-2.3"
    model = sbom["packages"][0]
    assert model["versionInfo"] == "0123abc" and model["licenseDeclared"] == "Apache-2.0"
    purl = model["externalRefs"][0]["referenceLocator"]
    assert purl == f"pkg:oci/{repo.rsplit('/', 1)[-1]}@sha256%3A{digest[7:]}?repository_url={host}/{repo}"
    listed = {c["checksumValue"] for f in sbom["files"] for c in f["checksums"]}
    index = _get(host, f"/v2/{repo}/manifests/{digest}", "application/vnd.oci.image.index.v1+json").json()
    layers = set()
    for v in index["manifests"]:
        vm = _get(host, f"/v2/{repo}/manifests/{v['digest']}", v["mediaType"]).json()
        layers |= {d["digest"].split(":")[1] for d in vm["layers"]}
    assert layers and layers <= listed
    for f in sbom["files"]:  # each file's SHA1 (SPDX requires one) is the SHA1 of the layer's bytes
        sums = {c["algorithm"]: c["checksumValue"] for c in f["checksums"]}
        blob = _get(host, f"/v2/{repo}/blobs/sha256:{sums['SHA256']}").content
        assert hashlib.sha1(blob).hexdigest() == sums["SHA1"]
    assert len(index["manifests"]) == 2 and len(sbom["packages"]) == 3
    _spdx_valid(sbom, tmp_path)
    # attaching again keeps one fallback index with both entries
    assert ff("sbom", ref, "--attach", "--revision", "0123abd").exit_code == 0
    idx = _get(host, f"/v2/{repo}/manifests/sha256-{digest.split(':')[1]}",
               "application/vnd.oci.image.index.v1+json").json()
    assert len(idx["manifests"]) == 2
