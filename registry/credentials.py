"""Which credentials a registry request carries: pipeline environment first, then Docker's config.

Order, most specific first:

1. ``FF_REGISTRY_USERNAME`` with ``FF_REGISTRY_PASSWORD`` (or ``FF_REGISTRY_PASSWORD_FILE``, a file
   holding it, e.g. a mounted Kubernetes secret), for the hosts in ``FF_REGISTRY_HOST`` (comma
   separated). CI pipelines map their secrets onto these, so no password is ever on a command line.
   The host list is required: credentials from the environment are never sent to a registry they were
   not meant for (a ``FROM`` or a pull of some other host).
2. Docker's ``config.json`` (``$DOCKER_CONFIG``): ``auths.<host>``, then ``credHelpers.<host>`` /
   ``credsStore`` through the ``docker-credential-<name>`` helper protocol (below);
   ``ff login`` writes ``auths`` (:mod:`registry.auth`).

Bearer-token registries (ghcr.io, Harbor, Docker Hub) take these as the Basic credentials for their
token endpoint; :class:`registry.http.RegistryClient` does that exchange.
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

from registry.http import AuthError, Credentials, RegistryError

ENV_USERNAME = "FF_REGISTRY_USERNAME"
ENV_PASSWORD = "FF_REGISTRY_PASSWORD"
ENV_PASSWORD_FILE = "FF_REGISTRY_PASSWORD_FILE"
ENV_HOST = "FF_REGISTRY_HOST"


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


def run_helper(helper: str, action: str, stdin: str) -> subprocess.CompletedProcess[str]:
    """Run ``docker-credential-<helper> <action>`` (get, store, erase) with ``stdin``."""
    exe = shutil.which(f"docker-credential-{helper}")
    if exe is None:
        raise RegistryError(
            f"the Docker config names credential helper {helper!r}, but docker-credential-{helper} "
            "is not on PATH"
        )
    try:
        return subprocess.run([exe, action], input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RegistryError(f"credential helper docker-credential-{helper} failed: {exc}") from None


def helper_for(cfg: dict[str, Any], host: str) -> str | None:
    """The credential helper the config names for ``host``: ``credHelpers[host]``, else ``credsStore``."""
    helpers = cfg.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, dict) else None
    helper = helper if isinstance(helper, str) and helper else cfg.get("credsStore")
    return helper if isinstance(helper, str) and helper else None


def _from_helper(helper: str, host: str) -> Credentials | None:
    """Ask a Docker credential helper (``docker-credential-<helper> get``) for ``host``'s credentials."""
    out = run_helper(helper, "get", host)
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
    helper = helper_for(cfg, host)
    return _from_helper(helper, host) if helper else None


def _norm(host: str) -> str:
    h = host.strip().lower()
    for prefix in ("https://", "http://"):
        if h.startswith(prefix):
            h = h[len(prefix):]
    return h.rstrip("/")


def from_environment(host: str) -> Credentials | None:
    """``FF_REGISTRY_*`` credentials for ``host``, or None (unset, or meant for other hosts)."""
    user = os.environ.get(ENV_USERNAME, "")
    password = os.environ.get(ENV_PASSWORD, "")
    pw_file = os.environ.get(ENV_PASSWORD_FILE, "")
    if not user and not password and not pw_file:
        return None
    hosts = [_norm(h) for h in os.environ.get(ENV_HOST, "").split(",") if h.strip()]
    if not hosts:
        raise AuthError(
            f"{ENV_USERNAME}/{ENV_PASSWORD} are set but {ENV_HOST} is not: name the registry host(s) "
            "these credentials are for"
        )
    if _norm(host) not in hosts:
        return None
    if pw_file:
        if password:
            raise AuthError(f"give {ENV_PASSWORD} or {ENV_PASSWORD_FILE}, not both")
        try:
            password = Path(pw_file).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise AuthError(f"{ENV_PASSWORD_FILE}={pw_file}: {exc.strerror or exc}") from None
    if not user or not password:
        raise AuthError(f"{ENV_USERNAME} and a password ({ENV_PASSWORD} or {ENV_PASSWORD_FILE}) go together")
    return Credentials(user, password)


def resolve(host: str) -> Credentials | None:
    """The credentials a request to ``host`` carries (see the module docstring), or None."""
    return from_environment(host) or load_credentials(host)
