from __future__ import annotations

import pytest

from registry.reference import Reference, ReferenceError, parse_reference

DIGEST = "sha256:" + "ab" * 32

GOOD = [
    ("smollm2", Reference("smollm2", "latest")),
    ("smollm2:q8", Reference("smollm2", "q8")),
    ("library/smollm2:v1.0", Reference("library/smollm2", "v1.0")),
    ("localhost/m:t", Reference("m", "t", host="localhost")),
    ("127.0.0.1:5000/ns/m:t", Reference("ns/m", "t", host="127.0.0.1:5000")),
    ("ghcr.io/org/model", Reference("org/model", "latest", host="ghcr.io")),
    (f"m@{DIGEST}", Reference("m", None, DIGEST)),
    (f"reg.io/m:t@{DIGEST}", Reference("m", "t", DIGEST, "reg.io")),
    ("a-b.c/e__f", Reference("e__f", "latest", host="a-b.c")),
    ("ns/a_b-c.d", Reference("ns/a_b-c.d", "latest")),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_parse_good(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("UPPER", "invalid name"),
        ("m:", "invalid tag"),
        ("m:-x", "invalid tag"),
        ("m@sha256:xyz", "sha256"),
        ("../etc", "invalid registry host"),
        ("ns//m", "invalid name"),
        ("m:" + "a" * 129, "invalid tag"),
        ("bad host!/m", "invalid"),
    ],
)
def test_parse_bad(text: str, reason: str) -> None:
    with pytest.raises(ReferenceError, match=reason):
        parse_reference(text)


def test_roundtrip_str() -> None:
    for text, _ in GOOD:
        ref = parse_reference(text)
        assert parse_reference(str(ref)) == ref
