"""Pick the variant of a model that fits this machine (or the one the user names): the one rule.

Every caller goes through :func:`select_variant` (``ff pull`` and the server's pulls, on a registry's
index) or :func:`select_stored` (``ff run``, ``ff export``, the server's model names and ``/api/show``, on
the store), so all of them pick the same variant for the same model, preferences and machine.

The rule (one strictness for every caller):

1. Preferences are strict. Each one given (``variant``, ``target``, ``quantize``, ``backend``: from the
   command's flags or the server's ``FF_TARGET``/``FF_QUANTIZE``/``FF_BACKEND``) must match; when no
   variant matches them all, that is an error listing the model's variants. An empty string is no
   preference.
2. Unless the preferences name one variant outright (``variant``, or both ``target`` and
   ``quantize``), only the variants that fit this machine remain: the device is present and the
   backend installed (:class:`HostInfo`). None fitting is an error listing the candidates.
3. Fitting variants are ranked (:func:`rank`): an accelerator beats the CPU, then higher precision,
   then the backend's preference (:data:`registry.choices.BACKENDS`). A tie at the top is an error
   listing the tied variants.
"""

from __future__ import annotations

import functools
import importlib.util
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from registry.artifact import VariantRef, present_variants, variants_of
from registry.choices import BACKENDS, DEVICE_PREFERENCE, GENERATORS, QUANTIZATIONS, TEXT_TASKS
from registry.reference import Reference
from registry.store import Store


class SelectionError(LookupError):
    """No variant, or more than one, matches; the message lists the candidates."""


@dataclass(frozen=True)
class HostInfo:
    devices: frozenset[str]  # "cpu" always; "cuda" when an NVIDIA GPU answers
    cuda_capabilities: frozenset[str]  # e.g. {"sm_90"}
    backends: frozenset[str]  # backends whose Python package is importable
    cpu_features: frozenset[str] = frozenset()  # e.g. {"x86_64", "avx2", "avx512f"}; empty: unknown
    generators: frozenset[str] = frozenset()  # backends whose LLM generator (GENERATORS) is importable

    def fits(self, v: VariantRef) -> bool:
        if v.device not in self.devices or v.backend not in self.backends:
            return False
        if v.task in TEXT_TASKS and v.backend in GENERATORS and v.backend not in self.generators:
            return False  # an ONNX LLM needs onnxruntime-genai, not only onnxruntime
        detail = v.target.split(":", 1)[1] if ":" in v.target else None
        if v.device == "cuda" and detail and detail not in self.cuda_capabilities:
            return False
        # `cpu:avx512f` or `cpu:aarch64`: every named feature must be present (`+`-separated).
        return not (
            v.device == "cpu" and detail and not set(detail.lower().split("+")) <= self.cpu_features
        )


def _cuda_capabilities() -> frozenset[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return frozenset()
    try:
        out = subprocess.run(
            [exe, "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return frozenset()
    if out.returncode != 0:
        return frozenset()
    return frozenset(
        "sm_" + line.strip().replace(".", "") for line in out.stdout.splitlines() if line.strip()
    )


def _cpu_features() -> frozenset[str]:
    """The machine architecture plus the CPU flags the kernel reports (avx2, avx512f, neon/asimd, …)."""
    feats = {platform.machine().lower()}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset(feats)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            feats.update(value.split())
            break
    return frozenset(f.lower() for f in feats)


@functools.cache
def detect_host() -> HostInfo:
    caps = _cuda_capabilities()
    devices = {"cpu"} | ({"cuda"} if caps else set())
    backends = {name for name, b in BACKENDS.items() if importlib.util.find_spec(b["module"]) is not None}
    generators = {name for name, (module, _) in GENERATORS.items() if importlib.util.find_spec(module)}
    return HostInfo(frozenset(devices), caps, frozenset(backends), _cpu_features(), frozenset(generators))


def _describe(vs: list[VariantRef]) -> str:
    return "\n".join(
        f"  {v.name}  (target {v.target}, backend {v.backend}, quantization {v.quantization})" for v in vs
    )


def rank(v: VariantRef) -> tuple[int, float, int]:
    """How good a fitting variant is: accelerator first, then precision, then the backend's preference."""
    q = QUANTIZATIONS.get(v.quantization.lower())
    b = BACKENDS.get(v.backend)
    return (
        DEVICE_PREFERENCE.get(v.device, 0),
        q["bits"] if q is not None else 0.0,
        b["preference"] if b is not None else 0,
    )


def select_variant(
    variants: list[VariantRef],
    *,
    target: str | None = None,
    quantize: str | None = None,
    backend: str | None = None,
    variant: str | None = None,
    host: HostInfo | None = None,
) -> VariantRef:
    """Choose one variant by the module's rule; raise :class:`SelectionError` listing the candidates when
    none matches the preferences, none fits this machine, or the best tie."""
    if not variants:
        raise SelectionError("the model has no variants")
    # "" (an unset FF_TARGET, a blank flag) is no preference
    target, quantize, backend, variant = target or None, quantize or None, backend or None, variant or None
    chosen = list(variants)
    if variant is not None:
        chosen = [v for v in chosen if v.name == variant]
    if target is not None:
        chosen = [v for v in chosen if v.target == target or v.device == target]
    if quantize is not None:
        chosen = [v for v in chosen if v.quantization.lower() == quantize.lower()]
    if backend is not None:
        chosen = [v for v in chosen if v.backend == backend]
    if not chosen:
        asked = {"variant": variant, "target": target, "quantize": quantize, "backend": backend}
        named = ", ".join(f"{k} {v}" for k, v in asked.items() if v is not None)
        raise SelectionError(
            f"no variant matches the selection ({named}); the model has:\n{_describe(variants)}"
        )
    explicit = variant is not None or (target is not None and quantize is not None)
    if not explicit:
        h = host or detect_host()
        fitting = [v for v in chosen if h.fits(v)]
        if not fitting:
            raise SelectionError(
                "no variant fits this machine "
                f"(devices: {', '.join(sorted(h.devices))}; "
                f"backends: {', '.join(sorted(h.backends)) or 'none'}); "
                f"candidates:\n{_describe(chosen)}"
            )
        best = max(rank(v) for v in fitting)
        chosen = [v for v in fitting if rank(v) == best]
    if len(chosen) > 1:
        raise SelectionError(
            "several variants fit equally well; choose one with --variant, --quantize, --backend or "
            "--target:\n" + _describe(chosen)
        )
    return chosen[0]


class Preferences(TypedDict, total=False):
    """:func:`select_variant`'s keyword arguments."""

    target: str | None
    quantize: str | None
    backend: str | None
    variant: str | None
    host: HostInfo | None


def select_stored(store: Store, ref: str | Reference, **prefs: Unpack[Preferences]) -> VariantRef:
    """The variant of stored model ``ref`` that ``ff run``, ``ff export`` and ``ff serve`` use.

    The candidates are the variants present in the store (a pull keeps only the one it chose; all the
    index lists when none is), or every listed one when ``variant`` names one (then a missing variant
    is reported as not pulled, not as unknown); :func:`select_variant` chooses among them with
    ``prefs`` (its keyword arguments). Raises
    :class:`registry.store.NotFoundError` for an unknown ``ref``.
    """
    listed = variants_of(store, ref)
    return select_variant(listed if prefs.get("variant") else present_variants(store, listed), **prefs)
