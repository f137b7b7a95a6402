"""Registry credentials in Docker's config format, so ``docker login`` and ``ff login`` share them.

The file is ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``); credentials live under
``auths.<host>.auth`` as base64 ``user:password``. Other keys in the file are kept as they are.
``ff login`` verifies the credentials with ``GET /v2/`` before saving them, so a wrong password is an
error at login, not a silent success.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from registry.http import AuthError, Credentials, RegistryClient, RegistryError
from registry.store import atomic_write_bytes


def docker_config_path() -> Path:
    env = os.environ.get("DOCKER_CONFIG")
    base = Path(env).expanduser() if env else Path.home() / ".docker"
    return base / "config.json"


def _host_keys(host: str) -> list[str]:
    """The spellings a host may have in ``auths`` (docker writes some with a scheme)."""
    return [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]


def _load(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read Docker config {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise RegistryError(f"Docker config {path} is not a JSON object")
    return obj


def _from_helper(helper: str, host: str) -> Credentials | None:
    """Ask a Docker credential helper (``docker-credential-<helper> get``) for ``host``'s credentials."""
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        raise RegistryError(
            f"the Docker config names credential helper {helper!r} for {host}, but "
            f"docker-credential-{helper} is not on PATH"
        )
    try:
        out = subprocess.run([exe, "get"], input=host, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryError(f"credential helper docker-credential-{helper} failed: {exc}") from None
    if out.returncode != 0:  # helpers exit non-zero with "credentials not found" when they have none
        return None
    try:
        body = json.loads(out.stdout)
    except ValueError:
        raise RegistryError(f"credential helper docker-credential-{helper} did not answer JSON") from None
    user, secret = body.get("Username"), body.get("Secret")
    if isinstance(user, str) and isinstance(secret, str) and secret:
        return Credentials(user, secret)
    return None


def load_credentials(host: str, *, path: Path | None = None) -> Credentials | None:
    """Credentials stored for ``host`` (by ``ff login`` or ``docker login``), or None.

    Inline ``auths`` entries first, then the config's ``credHelpers[host]`` or ``credsStore``
    (Docker Desktop and cloud logins keep passwords in such helpers).
    """
    cfg = _load(path or docker_config_path())
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    for key in _host_keys(host):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise RegistryError(f"stored credentials for {host} are not base64 user:password") from None
            if sep:
                return Credentials(user, password)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"])
    helpers = cfg.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    helper = helper if isinstance(helper, str) and helper else cfg.get("credsStore")
    if isinstance(helper, str) and helper:
        return _from_helper(helper, host)
    return None


def save_credentials(host: str, creds: Credentials, *, path: Path | None = None) -> Path:
    p = path or docker_config_path()
    cfg = _load(p)
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    auths[host] = {**(auths.get(host) or {}), "auth": creds.basic()}
    cfg["auths"] = auths
    atomic_write_bytes(p, json.dumps(cfg, indent="\t").encode())
    os.chmod(p, 0o600)
    return p


def remove_credentials(host: str, *, path: Path | None = None) -> bool:
    p = path or docker_config_path()
    cfg = _load(p)
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        return False
    removed = [k for k in _host_keys(host) if auths.pop(k, None) is not None]
    if removed:
        atomic_write_bytes(p, json.dumps(cfg, indent="\t").encode())
    return bool(removed)


def login(
    host: str,
    username: str,
    password: str,
    *,
    insecure: bool = False,
    ca_file: str | None = None,
    path: Path | None = None,
) -> Path:
    """Check ``username``/``password`` against ``host``'s ``/v2/`` and store them; return the file."""
    if not username or not password:
        raise AuthError("login needs a username and a password")
    creds = Credentials(username, password)
    client = RegistryClient(host, credentials=creds, insecure=insecure, ca_file=ca_file)
    resp = client.do_request(client.url("/v2/"), "GET")
    client.check(resp, 200, what="login (GET /v2/)")
    resp.close()
    return save_credentials(host, creds, path=path)


def client_for(host: str, *, insecure: bool = False, ca_file: str | None = None) -> RegistryClient:
    """A client for ``host`` carrying the stored credentials, if any."""
    return RegistryClient(host, credentials=load_credentials(host), insecure=insecure, ca_file=ca_file)
