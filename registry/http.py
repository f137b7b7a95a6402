"""An HTTP client for one OCI registry, on the oras SDK: transport policy, auth challenges, bounded reads.

``RegistryClient`` subclasses ``oras.provider.Registry`` so oras' URL building (``Container``), blob
HEAD (``blob_exists``), upload-session ``Location`` handling and token auth helpers are reused, but
replaces ``do_request``: oras' version retries every failure with sleeps of up to minutes and cannot
tell a wrong password from a network error. Here a 401 is answered once (Basic credentials, or a
Bearer token fetched from the challenge's realm), and a second 401 is an :class:`AuthError` that says
what to do.

Transport: HTTPS; plain HTTP only with ``insecure=True`` or for loopback hosts (127.0.0.0/8, localhost,
[::1]) that do not answer HTTPS. TLS verification uses ``ca_file``, else ``$FF_CA_BUNDLE``, else the
system bundle.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import oras.auth.utils
import oras.container
import oras.provider
import requests
import requests.adapters
import urllib3

from registry.errors import AuthError as AuthError
from registry.errors import NetworkError as NetworkError
from registry.errors import RegistryError as RegistryError
from registry.oci import MAX_MANIFEST_BYTES

TIMEOUT = (10.0, 300.0)
"""(connect, read) seconds for every request."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic(self) -> str:
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]``, ``[v6]:port``) is this machine: 127.0.0.0/8, localhost, ::1."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def speaks_tls(host: str, verify: bool | str) -> bool:
    """Whether ``host`` answers HTTPS (a certificate it cannot verify still counts: that is an error
    to report, not a reason to fall back to plain HTTP). Only asked for loopback hosts."""
    try:
        requests.get(f"https://{host}/v2/", verify=verify, timeout=(3.0, 10.0)).close()
    except requests.exceptions.SSLError as exc:
        return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc)
    except requests.exceptions.RequestException:
        return False
    return True


def tls_verify(ca_file: str | None) -> bool | str:
    path = ca_file or os.environ.get("FF_CA_BUNDLE") or None
    if path is None:
        return True
    if not os.path.isfile(path):
        raise RegistryError(f"CA bundle {path!r} does not exist")
    return path


def _reason(exc: Exception) -> str:
    """The root cause of a connection error (``[Errno 111] Connection refused``), not urllib3's wrapping."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    return m.group(0) if m else text


def _error_text(resp: requests.Response) -> str:
    """The registry's own error message (OCI error body) or the HTTP reason."""
    try:
        body = resp.json()
        errs = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errs, list) and errs:
            parts = [f"{e.get('code', '')}: {e.get('message', '')}" for e in errs if isinstance(e, dict)]
            return "; ".join(p.strip(": ") for p in parts)[:500]
    except ValueError:
        pass
    return resp.reason or ""


class _Adapter(requests.adapters.HTTPAdapter):
    """Connections that send request bodies in 1 MiB blocks (urllib3's default is 16 KiB: a 1 GB
    upload would be 65,000 Python-level reads and sends), pooled enough for parallel blob streams."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
        super().init_poolmanager(connections, maxsize, block=block, blocksize=1 << 20, **kw)


POOL_SIZE = 128
"""Connections kept per host: blobs at once × ranges per blob, with room (TransferOptions caps 64 each)."""


class RegistryClient(oras.provider.Registry):  # type: ignore[misc]
    """Requests to one registry host, authenticated on demand."""

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
    ) -> None:
        verify = tls_verify(ca_file)
        plain = insecure or (is_loopback(host) and not speaks_tls(host, verify))
        super().__init__(hostname=host, insecure=plain, tls_verify=verify, auth_backend="token")
        self.host = host
        self.credentials = credentials
        self.plain_http = plain
        self._authorization: str | None = None
        self._bearer_scope: str | None = None
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, _Adapter(pool_maxsize=POOL_SIZE))

    # --- requests ----------------------------------------------------------------------------------
    def url(self, path: str) -> str:
        return f"{self.prefix}://{self.host}{path}"

    def container(self, repository: str) -> oras.container.Container:
        return oras.container.Container(repository, registry=self.host)

    def _send(self, method: str, url: str, headers: dict[str, str], **kw: Any) -> requests.Response:
        if self._authorization:
            headers = {**headers, "Authorization": self._authorization}
        try:
            resp: requests.Response = self.session.request(
                method, url, headers=headers, verify=self._tls_verify, timeout=TIMEOUT, **kw
            )
            return resp
        except requests.exceptions.SSLError as exc:
            raise NetworkError(
                f"TLS error talking to {self.host}: {exc} (use --ca-file / FF_CA_BUNDLE for a private CA, "
                "or --insecure for a plain-HTTP registry)"
            ) from None
        except requests.exceptions.ConnectionError as exc:
            why = _reason(exc)
            raise NetworkError(f"cannot reach registry {self.host} over {self.prefix}: {why}") from None
        except requests.exceptions.Timeout:
            raise NetworkError(f"registry {self.host} timed out on {method} {url}") from None

    def do_request(  # mirrors oras' signature so oras' helpers (blob_exists, …) call it
        self,
        url: str,
        method: str = "GET",
        data: Any = None,
        headers: dict[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> requests.Response:
        """One request; on a 401 authenticate from the challenge and retry once."""
        hdrs = dict(headers or {})
        resp = self._send(method, url, hdrs, data=data, json=json, stream=stream)
        if resp.status_code != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        resp.close()
        self._authenticate(challenge)
        if hasattr(data, "seek"):
            data.seek(0)
        resp = self._send(method, url, hdrs, data=data, json=json, stream=stream)
        if resp.status_code == 401:
            resp.close()
            who = f"user {self.credentials.username!r}" if self.credentials else "anonymous access"
            raise AuthError(f"{self.host}: 401 Unauthorized: the registry rejected {who}")
        return resp

    def _authenticate(self, challenge: str) -> None:
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            if self.credentials is None:
                raise AuthError(
                    f"{self.host}: 401 Unauthorized: the registry needs credentials; "
                    f"run `ff login {self.host}` (or `docker login {self.host}`)"
                )
            self._authorization = "Basic " + self.credentials.basic()
            return
        if scheme != "bearer":
            raise AuthError(f"{self.host}: 401 Unauthorized with an unsupported challenge {challenge!r}")
        h = oras.auth.utils.parse_auth_header(challenge)
        if not h.realm or not str(h.realm).startswith(("https://", "http://")):
            raise AuthError(f"{self.host}: bearer challenge without a usable realm: {challenge!r}")
        if str(h.realm).startswith("http://") and not (self.plain_http):
            raise AuthError(f"{self.host}: refusing to send credentials to plain-HTTP token realm {h.realm}")
        params = {k: v for k, v in (("service", h.service), ("scope", h.scope)) if v}
        headers = {"Accept": "application/json"}
        if self.credentials is not None:
            headers["Authorization"] = "Basic " + self.credentials.basic()
        try:
            r = self.session.get(
                h.realm, params=params, headers=headers, verify=self._tls_verify, timeout=TIMEOUT
            )
        except requests.exceptions.RequestException as exc:
            raise AuthError(f"{self.host}: token endpoint {h.realm} failed: {exc}") from None
        if r.status_code in (401, 403):
            who = f"user {self.credentials.username!r}" if self.credentials else "anonymous access"
            hint = "" if self.credentials else f"; run `ff login {self.host}`"
            raise AuthError(f"{self.host}: {r.status_code} from token endpoint: it rejected {who}{hint}")
        if r.status_code != 200:
            raise AuthError(f"{self.host}: token endpoint answered {r.status_code}: {_error_text(r)}")
        try:
            body = r.json()
        except ValueError:
            raise AuthError(f"{self.host}: token endpoint did not answer JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(f"{self.host}: token endpoint answered without a token")
        self._authorization = "Bearer " + token
        self._bearer_scope = h.scope

    # --- checks --------------------------------------------------------------------------------------
    def check(self, resp: requests.Response, *ok: int, what: str) -> requests.Response:
        """Raise a clear :class:`RegistryError` unless ``resp`` has one of the ``ok`` statuses."""
        if resp.status_code in ok:
            return resp
        text = _error_text(resp)
        resp.close()
        if resp.status_code == 403:
            raise AuthError(f"{self.host}: 403 Forbidden on {what}: {text}")
        if resp.status_code == 401:
            raise AuthError(f"{self.host}: 401 Unauthorized on {what}: {text}; run `ff login {self.host}`")
        raise RegistryError(f"{self.host}: {what} failed: HTTP {resp.status_code} {text}")

    def ping(self) -> None:
        """GET /v2/: the registry speaks the distribution API and accepts our credentials."""
        resp = self.do_request(self.url("/v2/"), "GET")
        self.check(resp, 200, what="GET /v2/")
        resp.close()

    # --- bounded reads -------------------------------------------------------------------------------
    def read_bounded(self, resp: requests.Response, limit: int = MAX_MANIFEST_BYTES) -> bytes:
        """Read a body, refusing it as soon as it passes ``limit`` bytes (not after)."""
        declared = resp.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            resp.close()
            raise RegistryError(f"{self.host}: response of {declared} bytes is over the {limit} byte limit")
        buf = bytearray()
        for chunk in iter_body(resp, 64 * 1024):
            buf += chunk
            if len(buf) > limit:
                resp.close()
                raise RegistryError(f"{self.host}: response is over the {limit} byte limit")
        return bytes(buf)


class InterruptedTransfer(NetworkError):
    """The connection broke or ended early in the middle of a body; what arrived can be resumed."""


def iter_body(resp: requests.Response, size: int) -> Iterator[bytes]:
    """The raw body in chunks (no content decoding: registries send blobs as they are)."""
    try:
        while chunk := resp.raw.read(size, decode_content=False):
            yield chunk
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise InterruptedTransfer(f"connection broke while reading {resp.url}: {exc}") from None
