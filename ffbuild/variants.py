"""QUANTIZE × TARGET → variants: read the two instructions' words, pick backends and default
quantizations, and reject the combinations that cannot work, saying why.

- No TARGET means ``cpu``. A TARGET without BACKEND gets the default backend for its device and the
  quantization's family: GGUF types → llamacpp; ONNX types (fp32/fp16/int8) → onnxruntime, or tvm on
  metal/vulkan where onnxruntime does not run. Without QUANTIZE: the source's family decides (a .onnx
  file → the ONNX family, anything else → llamacpp) and each backend gets its default: llamacpp keeps a
  GGUF (or stored) source's own precision (``source``) and makes f16 from weights; ONNX backends fp32.
- Each variant's ``family`` (gguf, genai or tensor: which stages build it) is set here, once, by
  ``registry.choices.variant_family`` from the TASK and the backend.
- A GGUF source only runs on llamacpp; a .onnx source never does; a backend runs only its devices and
  its quantizations; types that need an importance matrix are refused (ff does not compute one).
- With several TARGETs, each type goes to the targets whose backend runs it: ``QUANTIZE fp32 int8`` with
  ``TARGET cpu BACKEND onnxruntime`` and ``TARGET cpu BACKEND tvm`` is fp32+int8 on onnxruntime and fp32
  on tvm. A type no target runs, or a target that gets no type, is still an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from ffbuild.errors import Problem, did_you_mean
from ffbuild.params import parse_bool
from ffbuild.plan import SourceKind, Variant
from registry.choices import BACKENDS, DEVICES, QUANTIZATIONS, SPEECH_TASKS, default_backend, variant_family

# Allowed ``device:detail`` details, and aliases mapped to the canonical spelling.
DEVICE_DETAILS: Final[dict[str, tuple[re.Pattern[str], str]]] = {
    "cpu": (re.compile(r"x86_64|arm64"), "x86_64 or arm64"),
    "cuda": (re.compile(r"sm_[1-9][0-9]{1,2}[af]?"), "sm_<compute capability>, e.g. cuda:sm_90"),
    "rocm": (re.compile(r"gfx[0-9]{2,4}[0-9a-f]"), "a gfx target, e.g. rocm:gfx90a or rocm:gfx1100"),
}
DETAIL_ALIASES: Final = {"amd64": "x86_64", "x86-64": "x86_64", "aarch64": "arm64"}
_OPTION_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_FAMILY_BY_SOURCE: Final = {
    SourceKind.GGUF_FILE: "gguf",
    SourceKind.ONNX_FILE: "onnx",
    SourceKind.CT2_FOLDER: "ctranslate2",
}


@dataclass(frozen=True)
class TargetSpec:
    """A TARGET as written: device, optional detail, optional BACKEND, key=value options."""

    device: str
    detail: str | None = None
    backend: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.device}:{self.detail}" if self.detail else self.device


@dataclass(frozen=True)
class QuantizeSpec:
    types: tuple[str, ...]
    requantize: bool | None = None  # requantize=… when given


@dataclass(frozen=True)
class VariantProblem:
    """Why a (quantization, target) pair cannot be built; the indexes say which words to blame."""

    problem: Problem
    quant: int | None  # index into the quantization list
    target: int  # index into the target list
    blame: str  # the word to point at: "quant" (the type), "backend" (TARGET's BACKEND) or "target"
    unsupported_type: bool = False  # the backend does not run the type (dropped if others build it)


def parse_quantize(words: Sequence[str]) -> QuantizeSpec:
    """QUANTIZE's words: types (case-insensitive) and ``requantize=true|false``."""
    types: list[str] = []
    requantize: bool | None = None
    for i, word in enumerate(words):
        key, eq, value = word.partition("=")
        if eq:
            if key.lower() != "requantize":
                raise Problem(
                    f'unknown QUANTIZE option "{key}"', hint=did_you_mean(key, ["requantize"]), arg=i
                )
            try:
                requantize = parse_bool(value.lower() if value.lower() in ("true", "false") else value)
            except Problem as exc:
                raise Problem(
                    f"requantize: {exc.message}", hint="requantize=true or requantize=false", arg=i
                ) from None
            continue
        q = word.lower()
        if q not in QUANTIZATIONS:
            raise Problem(
                f'unknown quantization "{word}"',
                expected=tuple(QUANTIZATIONS),
                hint=did_you_mean(q, QUANTIZATIONS),
                arg=i,
            )
        if QUANTIZATIONS[q]["needs_imatrix"]:
            raise Problem(
                f"{q} needs an importance matrix, which ff does not compute",
                hint="choose a type without one, e.g. q2_k, q3_k_s or iq4_xs",
                arg=i,
            )
        if q in types:
            raise Problem(f"{q} is listed twice", arg=i)
        types.append(q)
    if not types and words:
        raise Problem("QUANTIZE needs at least one type", hint="e.g. QUANTIZE q8_0 q4_k_m", arg=0)
    return QuantizeSpec(tuple(types), requantize)


def parse_target(words: Sequence[str]) -> TargetSpec:
    """TARGET's words: ``<device>[:detail] [BACKEND <backend>] [key=value …]``."""
    if not words:
        raise Problem("TARGET needs a device", expected=tuple(DEVICES))
    device, colon, detail = words[0].partition(":")
    device = device.lower()
    if device not in DEVICES:
        raise Problem(
            f'unknown device "{device}"', expected=tuple(DEVICES), hint=did_you_mean(device, DEVICES), arg=0
        )
    if colon:
        detail = DETAIL_ALIASES.get(detail.lower(), detail.lower())
        allowed = DEVICE_DETAILS.get(device)
        if allowed is None:
            raise Problem(f"{device} takes no detail after ':'", arg=0)
        if not allowed[0].fullmatch(detail):
            raise Problem(f'unknown {device} detail "{detail}"', hint=f"{device}: takes {allowed[1]}", arg=0)
    backend: str | None = None
    options: dict[str, str] = {}
    i = 1
    while i < len(words):
        word = words[i]
        if word.upper() == "BACKEND":
            if backend is not None:
                raise Problem("BACKEND is given twice", arg=i)
            if i + 1 >= len(words):
                raise Problem("BACKEND needs a name", expected=tuple(BACKENDS), arg=i)
            backend = words[i + 1].lower()
            if backend not in BACKENDS:
                raise Problem(
                    f'unknown backend "{words[i + 1]}"',
                    expected=tuple(BACKENDS),
                    hint=did_you_mean(backend, BACKENDS),
                    arg=i + 1,
                )
            i += 2
            continue
        key, eq, value = word.partition("=")
        if not eq:
            raise Problem(
                f'unexpected "{word}" in TARGET', hint="expected BACKEND <backend> or key=value", arg=i
            )
        if key.lower() == "backend":
            raise Problem("write the backend as BACKEND <name>, not backend=", arg=i)
        if not _OPTION_KEY.fullmatch(key):
            raise Problem(f'invalid option name "{key}" (letters, digits, _ . -)', arg=i)
        if key in options:
            raise Problem(f"option {key} is given twice", arg=i)
        options[key] = value
        i += 1
    return TargetSpec(device, detail if colon else None, backend, options)


def source_family(kind: SourceKind) -> str | None:
    """ "gguf", "onnx" or "ctranslate2" for sources fixed to one format; None for weights that convert
    to either."""
    return _FAMILY_BY_SOURCE.get(kind)


def default_quantization(backend: str, kind: SourceKind) -> str:
    if BACKENDS[backend]["format"] == "gguf":
        return "source" if kind in (SourceKind.GGUF_FILE, SourceKind.OCI) else "f16"
    if BACKENDS[backend]["format"] == "ctranslate2":
        return "int8"  # what faster-whisper runs on CPUs by default
    return "fp32"


def expand(
    quants: Sequence[str], targets: Sequence[TargetSpec], kind: SourceKind, task: str
) -> tuple[list[Variant], list[VariantProblem]]:
    """Every (quantization, target) pair as a variant of a ``task`` model, and the problems of the pairs
    that cannot be."""
    variants: list[Variant] = []
    problems: list[VariantProblem] = []
    seen: dict[str, str] = {}
    built: set[tuple[int | None, int]] = set()  # (type index, target index) pairs that make a variant
    fixed = "ctranslate2" if task in SPEECH_TASKS else source_family(kind)
    for ti, t in enumerate(targets):
        pairs: list[tuple[int | None, str, str]] = []
        if quants:
            for index, q in enumerate(quants):
                family = "ctranslate2" if fixed == "ctranslate2" else QUANTIZATIONS[q]["format"]
                pairs.append((index, q, t.backend or default_backend(family, t.device)))
        else:
            backend = t.backend or default_backend(fixed or "gguf", t.device)
            pairs.append((None, default_quantization(backend, kind), backend))
        for qi, q, backend in pairs:
            checked = _check(q, t, backend, kind, fixed)
            if checked is not None:
                problem, on_quant = checked
                blame = "quant" if on_quant and qi is not None else "backend" if t.backend else "target"
                unsupported = q != "source" and q not in BACKENDS[backend]["quantizations"]
                problems.append(VariantProblem(problem, qi, ti, blame, unsupported and t.backend is not None))
                continue
            v = Variant(
                quantization=q,
                device=t.device,
                device_detail=t.detail,
                backend=backend,
                options=t.options,
                family=variant_family(task, backend),
            )
            if v.name in seen:
                problems.append(
                    VariantProblem(
                        Problem(
                            f"two variants would be named {v.name} ({seen[v.name]} and {backend})",
                            hint="one quantization on one target is one variant; drop one of the TARGETs",
                        ),
                        qi,
                        ti,
                        "target",
                    )
                )
                continue
            seen[v.name] = backend
            variants.append(v)
            built.add((qi, ti))
    problems = [
        p
        for p in problems
        if not (
            p.unsupported_type
            and any(q == p.quant for q, _ in built)
            and any(t == p.target for _, t in built)
        )
    ]
    return variants, problems


def _check(
    q: str, t: TargetSpec, backend: str, kind: SourceKind, fixed: str | None
) -> tuple[Problem, bool] | None:
    """Why ``q`` on ``t`` with ``backend`` cannot work, and whether the type (not the TARGET) is to blame;
    ``fixed``: the format the source (or the speech task) ties the variants to."""
    spec = BACKENDS[backend]
    chosen_by_type = t.backend is None  # the type's family picked the backend
    if t.device not in spec["devices"]:
        return Problem(
            f"the {backend} backend does not run on {t.device}",
            hint=f"{backend} runs on: {', '.join(spec['devices'])}",
        ), False
    onnx_type = q in QUANTIZATIONS and QUANTIZATIONS[q]["format"] != "gguf"
    if fixed == "gguf" and spec["format"] != "gguf":
        return Problem(
            f"a GGUF source runs only on llamacpp, not {backend}"
            + (f" ({q} is an ONNX-family type)" if onnx_type else ""),
            hint="FROM the Hugging Face weights to export ONNX, or use GGUF types (q8_0, q4_k_m, …)",
        ), chosen_by_type
    if fixed == "onnx" and spec["format"] == "gguf":
        return Problem(
            "an ONNX source cannot be converted to GGUF for llamacpp"
            + (f" ({q} is a GGUF type)" if q != "source" else ""),
            hint="use fp32, fp16 or int8 with onnxruntime, tvm or tensorrt",
        ), chosen_by_type
    if (fixed == "ctranslate2") != (spec["format"] == "ctranslate2"):
        return Problem(
            f"a CTranslate2 Whisper folder runs only on ctranslate2, not {backend}"
            if fixed == "ctranslate2"
            else f"the ctranslate2 backend runs CTranslate2 Whisper models (TASK transcribe), not a {kind}",
            hint="QUANTIZE int8 float16 float32 with BACKEND ctranslate2 (or none) for speech models",
        ), chosen_by_type
    if q != "source" and q not in spec["quantizations"]:
        shown = ", ".join(spec["quantizations"][:12]) + (", …" if len(spec["quantizations"]) > 12 else "")
        return Problem(f"{backend} cannot run {q}", hint=f"{backend} takes: {shown}"), True
    return None
