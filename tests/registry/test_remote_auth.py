"""Login, logout and authenticated push/pull against docker-registry with htpasswd (bcrypt) auth."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner
from remote_testkit import PASSWORD, USER, RegistryServer, blob_desc, make_model, push_raw, serve_http

from registry.auth import load_credentials, login, save_credentials
from registry.http import AuthError, Credentials, RegistryClient, RegistryError, is_loopback
from registry.remote import pull, push
from registry.store import Store

pytestmark = pytest.mark.registry


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Store:
    store = Store(tmp_path_factory.mktemp("auth-src") / "store")
    make_model(store, smollm2_gguf)
    return store


def test_push_without_login_is_a_clear_401(
    auth_registry: RegistryServer, small_store: Store, docker_config: Path
) -> None:
    pattern = r"401 Unauthorized.*ff login " + re.escape(auth_registry.host)
    with pytest.raises(AuthError, match=pattern):
        push("smollm2:1", store=small_store, remote_ref=f"{auth_registry.host}/ff/auth:1")


def test_wrong_password_fails_at_login(auth_registry: RegistryServer, docker_config: Path) -> None:
    with pytest.raises(AuthError, match=r"401 Unauthorized.*rejected user 'ffuser'"):
        login(auth_registry.host, USER, "wrong-password")
    assert not (docker_config / "config.json").exists()
    with pytest.raises(AuthError, match="rejected user 'nobody'"):
        login(auth_registry.host, "nobody", PASSWORD)


def test_login_then_push_and_pull(
    auth_registry: RegistryServer, small_store: Store, docker_config: Path, tmp_path: Path
) -> None:
    from ffcli.remote import login as login_cmd
    from ffcli.remote import logout as logout_cmd

    runner = CliRunner()
    bad = runner.invoke(login_cmd, [auth_registry.host, "-u", USER, "--password-stdin"], input="nope\n")
    assert bad.exit_code == 4 and "401" in bad.output and "Traceback" not in bad.output  # exit 4: auth
    ok = runner.invoke(login_cmd, [auth_registry.host, "-u", USER, "--password-stdin"], input=PASSWORD + "\n")
    assert ok.exit_code == 0, ok.output
    cfg = json.loads((docker_config / "config.json").read_text())
    assert base64.b64decode(cfg["auths"][auth_registry.host]["auth"]).decode() == f"{USER}:{PASSWORD}"
    assert (docker_config / "config.json").stat().st_mode & 0o077 == 0

    remote = f"{auth_registry.host}/ff/auth:1"
    res = push("smollm2:1", store=small_store, remote_ref=remote)
    assert res.blobs_uploaded == 8
    got = pull(remote, store=Store(tmp_path / "store"), variant="q4_1-cpu")
    assert got.digest == res.digest

    out = runner.invoke(logout_cmd, [auth_registry.host])
    assert out.exit_code == 0, out.output
    assert load_credentials(auth_registry.host) is None
    with pytest.raises(AuthError, match="ff login"):
        pull(remote, store=Store(tmp_path / "store2"), variant="q4_1-cpu")
    again = runner.invoke(logout_cmd, [auth_registry.host])
    assert again.exit_code == 1 and "not logged in" in again.output


def test_docker_login_credentials_are_used(
    auth_registry: RegistryServer, docker_config: Path, tmp_path: Path
) -> None:
    """A config.json written the way `docker login` writes it (other keys kept) works as is."""
    (docker_config / "config.json").write_text(json.dumps({
        "auths": {auth_registry.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}},
        "HttpHeaders": {"User-Agent": "Docker-Client"},
    }))
    creds = load_credentials(auth_registry.host)
    assert creds == Credentials(USER, PASSWORD)
    RegistryClient(auth_registry.host, credentials=creds).ping()
    save_credentials("other.example:5000", Credentials("a", "b"))
    cfg = json.loads((docker_config / "config.json").read_text())
    assert cfg["HttpHeaders"] == {"User-Agent": "Docker-Client"} and auth_registry.host in cfg["auths"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.3.4.5", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.evil.com:5000", False),
    ],
)
def test_plain_http_only_for_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    assert RegistryClient(host).prefix == ("http" if loopback else "https")
    assert RegistryClient(host, insecure=True).prefix == "http"


def test_missing_ca_bundle_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="CA bundle"):
        RegistryClient("registry.example.com", ca_file=str(tmp_path / "none.pem"))


# --- the bearer-token flow, against a crafted registry + token endpoint --------------------------------
class _TokenRegistry(BaseHTTPRequestHandler):
    """/v2/ wants a Bearer token; /token hands one out for good Basic credentials (like Docker Hub)."""

    protocol_version = "HTTP/1.1"
    token_requests: list[dict[str, list[str]]] = []  # noqa: RUF012 - shared with the test

    def log_message(self, format: str, *args: object) -> None:
        return None

    def _reply(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        auth = self.headers.get("Authorization", "")
        if url.path == "/token":
            self.token_requests.append(parse_qs(url.query))
            good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if auth != good:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            else:
                self._reply(200, {"token": "tok-123", "expires_in": 300})
        elif auth == "Bearer tok-123":
            self._reply(200, {})
        else:
            host = self.headers.get("Host", "")
            challenge = f'Bearer realm="http://{host}/token",service="ff-test",scope="registry:catalog:*"'
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED"}]}, {"WWW-Authenticate": challenge})


@pytest.fixture(scope="module")
def token_registry() -> Iterator[str]:
    with serve_http(_TokenRegistry) as host:
        yield host


def test_bearer_token_flow(token_registry: str, docker_config: Path) -> None:
    with pytest.raises(AuthError, match="rejected anonymous access; run `ff login"):
        RegistryClient(token_registry).ping()
    with pytest.raises(AuthError, match="token endpoint: it rejected user 'ffuser'"):
        login(token_registry, USER, "wrong")
    login(token_registry, USER, PASSWORD)
    assert load_credentials(token_registry) == Credentials(USER, PASSWORD)
    assert _TokenRegistry.token_requests[-1] == {"service": ["ff-test"], "scope": ["registry:catalog:*"]}


def test_tls_with_a_private_ca(
    tls_registry: tuple[RegistryServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_registry
    # Loopback, but it answers HTTPS: ff uses HTTPS and will not fall back to plain HTTP.
    with pytest.raises(RegistryError, match=r"TLS error .*--ca-file"):
        RegistryClient(server.host).ping()
    client = RegistryClient(server.host, ca_file=str(ca))
    assert client.prefix == "https"
    client.ping()
    monkeypatch.setenv("FF_CA_BUNDLE", str(ca))
    weights = b"GGUF" + b"\0" * 60
    config = json.dumps({"descriptor": {}, "config": {"format": "gguf"},
                         "modelfs": {"type": "layers", "diffIds": ["x"]}}).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob_desc(config, "application/vnd.cncf.model.config.v1+json"),
        "layers": [blob_desc(weights, "application/vnd.cncf.model.weight.v1.raw", "model.gguf")],
    }
    digest = push_raw(server.host, "tls/model", "1", [config, weights], manifest)
    store = Store(tmp_path / "store")
    assert pull(f"{server.host}/tls/model:1", store=store).digest == digest
    assert store.read_blob(digest)


def test_docker_credential_helper(
    auth_registry: RegistryServer, docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`credsStore` / `credHelpers` (Docker Desktop, cloud logins): the helper protocol on stdin/stdout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-fftest"
    helper.write_text(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread host\n"
        f"if [ \"$host\" = \"{auth_registry.host}\" ]; then\n"
        f"  echo '{json.dumps({'ServerURL': auth_registry.host, 'Username': USER, 'Secret': PASSWORD})}'\n"
        "else echo 'credentials not found in native keychain'; exit 1; fi\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    config = {"auths": {auth_registry.host: {}}, "credsStore": "fftest"}
    (docker_config / "config.json").write_text(json.dumps(config))
    creds = load_credentials(auth_registry.host)
    assert creds == Credentials(USER, PASSWORD)
    RegistryClient(auth_registry.host, credentials=creds).ping()
    assert load_credentials("other.example:5000") is None
    (docker_config / "config.json").write_text(json.dumps({"credHelpers": {"x.example": "missing"}}))
    with pytest.raises(RegistryError, match="docker-credential-missing is not on PATH"):
        load_credentials("x.example")


def test_unreachable_registry_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pattern = rf"^cannot reach registry 127\.0\.0\.1:{port} over http: \[Errno"
    with pytest.raises(RegistryError, match=pattern):
        pull(f"127.0.0.1:{port}/ns/model:1", store=Store(tmp_path / "store"))
