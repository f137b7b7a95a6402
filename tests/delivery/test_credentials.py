"""FF_REGISTRY_* credentials: scoped to FF_REGISTRY_HOST, a password file, precedence over config.json."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from remote_testkit import PASSWORD, USER, RegistryServer

from ffcli import main
from registry.auth import client_for, save_credentials
from registry.credentials import from_environment, resolve
from registry.http import AuthError, Credentials

pytestmark = pytest.mark.registry


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, docker_config: Path) -> None:
    names = ("FF_REGISTRY_HOST", "FF_REGISTRY_USERNAME", "FF_REGISTRY_PASSWORD", "FF_REGISTRY_PASSWORD_FILE")
    for k in names:
        monkeypatch.delenv(k, raising=False)


def test_environment_credentials_are_scoped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert from_environment("r.example") is None
    monkeypatch.setenv("FF_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("FF_REGISTRY_PASSWORD", "pw")
    with pytest.raises(AuthError, match="FF_REGISTRY_HOST is not"):
        from_environment("r.example")
    monkeypatch.setenv("FF_REGISTRY_HOST", "https://r.example/, other.example:5000")
    assert from_environment("r.example") == Credentials("ci", "pw")
    assert from_environment("OTHER.example:5000") == Credentials("ci", "pw")
    assert from_environment("evil.example") is None  # never sent to a host they were not meant for
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("FF_REGISTRY_PASSWORD_FILE", str(secret))
    with pytest.raises(AuthError, match="not both"):
        from_environment("r.example")
    monkeypatch.delenv("FF_REGISTRY_PASSWORD")
    assert from_environment("r.example") == Credentials("ci", "from-file")
    monkeypatch.delenv("FF_REGISTRY_USERNAME")
    with pytest.raises(AuthError, match="go together"):
        from_environment("r.example")


def test_environment_wins_over_config(auth_registry: RegistryServer, monkeypatch: pytest.MonkeyPatch) -> None:
    save_credentials(auth_registry.host, Credentials(USER, "stale-password"))
    assert resolve(auth_registry.host) == Credentials(USER, "stale-password")
    monkeypatch.setenv("FF_REGISTRY_HOST", auth_registry.host)
    monkeypatch.setenv("FF_REGISTRY_USERNAME", USER)
    monkeypatch.setenv("FF_REGISTRY_PASSWORD", PASSWORD)
    client_for(auth_registry.host).ping()  # the config's stale password would be a 401


def test_auth_and_network_exit_codes(auth_registry: RegistryServer, docker_config: Path) -> None:
    (docker_config / "config.json").write_text(json.dumps({}))
    out = CliRunner().invoke(main, ["pull", f"{auth_registry.host}/ns/m:1", "-q"])
    assert out.exit_code == 4 and "401" in out.output, out.output
    out = CliRunner().invoke(main, ["pull", "127.0.0.1:9/ns/m:1", "-q"])
    assert out.exit_code == 5 and "cannot reach registry" in out.output, out.output


def test_login_and_logout_through_a_credential_helper(
    auth_registry: RegistryServer, docker_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With credsStore set, ff login stores the secret in the helper (store), never in config.json, as
    docker login does; pulls read it back (get); ff logout erases it (erase)."""
    bin_dir, vault = tmp_path / "bin", tmp_path / "vault.json"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-ffvault"
    helper.write_text(f"""#!{sys.executable}
import json, sys
path = {str(vault)!r}
try:
    vault = json.load(open(path))
except FileNotFoundError:
    vault = {{}}
action, data = sys.argv[1], sys.stdin.read().strip()
if action == "store":
    entry = json.loads(data)
    vault[entry["ServerURL"]] = entry
elif action == "get":
    if data not in vault:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(vault[data]))
elif action == "erase":
    if vault.pop(data, None) is None:
        print("credentials not found in native keychain")
        sys.exit(1)
json.dump(vault, open(path, "w"))
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    (docker_config / "config.json").write_text(json.dumps({"credsStore": "ffvault"}))
    out = CliRunner().invoke(main, ["login", auth_registry.host, "-u", USER, "--password-stdin"],
                             input=PASSWORD + "\n")
    assert out.exit_code == 0, out.output
    text = (docker_config / "config.json").read_text()
    assert PASSWORD not in text and json.loads(text)["auths"] == {auth_registry.host: {}}
    assert json.loads(vault.read_text())[auth_registry.host]["Secret"] == PASSWORD
    client_for(auth_registry.host).ping()
    out = CliRunner().invoke(main, ["logout", auth_registry.host])
    assert out.exit_code == 0, out.output
    assert json.loads(vault.read_text()) == {}
    assert resolve(auth_registry.host) is None
