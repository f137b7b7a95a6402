"""Model references: ``name``, ``name:tag``, ``ns/name:tag``, ``host[:port]/ns/name:tag``, ``…@sha256:…``.

The rules follow Docker's: the first path component is a registry host when it contains a ``.`` or a
``:`` or is ``localhost``; a missing tag means ``latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.oci import check_digest

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$")

DEFAULT_TAG = "latest"


class ReferenceError(ValueError):
    """A reference string that cannot name a model."""


@dataclass(frozen=True)
class Reference:
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None
    host: str | None = None

    @property
    def is_remote(self) -> bool:
        return self.host is not None

    @property
    def name(self) -> str:
        """``host/repository`` (or just ``repository`` for a local name)."""
        return f"{self.host}/{self.repository}" if self.host else self.repository

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.repository, tag, None, self.host)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str) -> Reference:
    """Parse and validate a reference; raise :class:`ReferenceError` with the reason."""
    s = text.strip()
    if not s:
        raise ReferenceError("empty model reference")
    digest: str | None = None
    if "@" in s:
        s, digest = s.split("@", 1)
        try:
            check_digest(digest)
        except ValueError as exc:
            raise ReferenceError(f"{text!r}: {exc}") from None
    host: str | None = None
    first, sep, rest = s.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.match(first):
            raise ReferenceError(f"{text!r}: invalid registry host {first!r}")
        host, s = first, rest
    tag: str | None = None
    last_slash = s.rfind("/")
    colon = s.rfind(":")
    if colon > last_slash:
        s, tag = s[:colon], s[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ReferenceError(
                f"{text!r}: invalid tag {tag!r} (letters, digits, '.', '_', '-'; at most 128)"
            )
    if not _REPO_RE.match(s):
        raise ReferenceError(
            f"{text!r}: invalid name {s!r} (lower-case letters, digits and '.', '_', '-' separators, "
            "path components joined by '/')"
        )
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(repository=s, tag=tag, digest=digest, host=host)
