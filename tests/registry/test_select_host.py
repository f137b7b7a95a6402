"""Variant selection by CPU features (``TARGET cpu:avx512f``) and what detect_host reports here."""

from __future__ import annotations

import hashlib
import platform

import pytest

from registry.artifact import VariantRef
from registry.oci import ANN_BACKEND, ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, OCI_MANIFEST, Descriptor
from registry.select import HostInfo, SelectionError, detect_host, select_variant


def _v(name: str, target: str) -> VariantRef:
    ann = {ANN_VARIANT: name, ANN_TARGET: target, ANN_BACKEND: "llamacpp", ANN_QUANTIZATION: "q8_0"}
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    return VariantRef(Descriptor(media_type=OCI_MANIFEST, digest=digest, size=1, annotations=ann))


def _host(*features: str) -> HostInfo:
    return HostInfo(frozenset({"cpu"}), frozenset(), frozenset({"llamacpp"}), frozenset(features))


@pytest.mark.parametrize(
    ("host", "fits"),
    [
        (_host("x86_64", "avx2", "avx512f"), {"plain", "avx2", "avx512f", "both"}),
        (_host("x86_64", "avx2"), {"plain", "avx2"}),
        (_host("aarch64", "asimd"), {"plain", "arm"}),
        (_host(), {"plain"}),  # features unknown: only the plain variant is safe
    ],
)
def test_cpu_feature_targets(host: HostInfo, fits: set[str]) -> None:
    variants = [
        _v("plain", "cpu"), _v("avx2", "cpu:avx2"), _v("avx512f", "cpu:AVX512F"),
        _v("both", "cpu:avx2+avx512f"), _v("arm", "cpu:aarch64"),
    ]
    assert {v.name for v in variants if host.fits(v)} == fits


def test_several_fitting_cpu_variants_is_ambiguous() -> None:
    variants = [_v("plain", "cpu"), _v("avx2", "cpu:avx2")]
    with pytest.raises(SelectionError, match="several variants fit") as err:
        select_variant(variants, host=_host("x86_64", "avx2"))
    assert "plain" in str(err.value) and "avx2" in str(err.value)
    assert select_variant(variants, variant="avx2", host=_host()).name == "avx2"


def test_detect_host_reports_this_machine() -> None:
    h = detect_host()
    assert "cpu" in h.devices
    assert platform.machine().lower() in h.cpu_features
