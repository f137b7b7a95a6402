"""FF_REGISTRY_* credentials: scoped to FF_REGISTRY_HOST, a password file, precedence over config.json."""

from __future__ import annotations

import json
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
