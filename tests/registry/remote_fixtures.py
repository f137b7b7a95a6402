"""Registry fixtures shared by tests/registry and tests/delivery (each conftest imports them).

``registry_server`` runs Debian's docker-registry without auth, ``auth_registry`` with htpasswd (bcrypt)
auth, ``tls_registry`` over HTTPS with a throwaway CA; ``docker_config`` is an empty $DOCKER_CONFIG.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_testkit import PASSWORD, USER, RegistryServer, make_tls, start_registry, stop_registry


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("registry"), None)
    yield server
    stop_registry(server)


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    root = tmp_path_factory.mktemp("auth-registry")
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd is missing: apt-get install apache2-utils (.ci/setup does)")
    line = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
    ).stdout.strip()
    htpasswd = root / "htpasswd"
    htpasswd.write_text(line + "\n")
    server = start_registry(root / "srv", htpasswd)
    yield server
    stop_registry(server)


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $DOCKER_CONFIG folder so tests never read or write the user's credentials."""
    d = tmp_path / "docker"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RegistryServer, Path]]:
    """A registry serving HTTPS with a certificate from a throwaway CA; yields (server, ca.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing: apt-get install openssl")
    root = tmp_path_factory.mktemp("tls-registry")
    ca, cert, key = make_tls(root / "pki")
    server = start_registry(root / "srv", None, (cert, key))
    yield server, ca
    stop_registry(server)
