"""Registry credentials in Docker's config format, so ``docker login`` and ``ff login`` share them.

The file is ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``); credentials live under
``auths.<host>.auth`` as base64 ``user:password``, or, when the file names a credential helper for the
host (``credHelpers``/``credsStore``), in that helper (``docker-credential-<name> store``/``erase``),
as ``docker login`` does. Other keys in the file are kept as they are.
``ff login`` verifies the credentials with ``GET /v2/`` before saving them, so a wrong password is an
error at login, not a silent success.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from registry.atomic import atomic_write_bytes
from registry.credentials import (
    _host_keys,
    _load,
    docker_config_path,
    helper_for,
    load_credentials,
    resolve,
    run_helper,
)
from registry.http import AuthError, Credentials, RegistryClient, RegistryError

__all__ = ["client_for", "docker_config_path", "load_credentials", "login", "remove_credentials",
           "save_credentials"]


def save_credentials(host: str, creds: Credentials, *, path: Path | None = None) -> Path:
    """Store ``creds`` as docker does: in the credential helper the config names for ``host``
    (``credHelpers``/``credsStore``, with an empty ``auths`` entry), else inline in ``auths``."""
    p = path or docker_config_path()
    cfg = _load(p)
    auths = cfg.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    helper = helper_for(cfg, host)
    if helper:
        body = json.dumps({"ServerURL": host, "Username": creds.username, "Secret": creds.password})
        out = run_helper(helper, "store", body)
        if out.returncode != 0:
            why = (out.stdout or out.stderr).strip()[:200]
            raise RegistryError(f"docker-credential-{helper} store failed: {why}")
        entry = {k: v for k, v in (auths.get(host) or {}).items() if k != "auth"}
    else:
        entry = {**(auths.get(host) or {}), "auth": creds.basic()}
    auths[host] = entry
    cfg["auths"] = auths
    atomic_write_bytes(p, json.dumps(cfg, indent="\t").encode())
    os.chmod(p, 0o600)
    return p


def remove_credentials(host: str, *, path: Path | None = None) -> bool:
    p = path or docker_config_path()
    cfg = _load(p)
    helper = helper_for(cfg, host)
    erased = helper is not None and run_helper(helper, "erase", host).returncode == 0
    auths = cfg.get("auths")
    auths = auths if isinstance(auths, dict) else {}
    removed = [k for k in _host_keys(host) if auths.pop(k, None) is not None]
    if removed:
        atomic_write_bytes(p, json.dumps(cfg, indent="\t").encode())
    return erased or bool(removed)


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
    """A client for ``host`` carrying its credentials (``FF_REGISTRY_*``, else Docker's config), if any."""
    return RegistryClient(host, credentials=resolve(host), insecure=insecure, ca_file=ca_file)
