"""The converter started right after planning (:mod:`ffbuild.stages.convert.early`) and the build."""

from __future__ import annotations

from pathlib import Path

from ffbuild.build import BuildOptions, build
from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
from ffbuild.stages.convert.early import start_early
from registry.choices import variant_family
from registry.reference import parse_reference
from registry.store import Store


def _plan(source: Source, quantization: str = "f16") -> BuildPlan:
    family = variant_family("embed", "llamacpp")
    variant = Variant(quantization=quantization, device="cpu", backend="llamacpp", family=family)
    fields = {"modelfile": None, "context": Path("/"), "source": source, "variants": (variant,)}
    fields["task"] = "embed"
    return BuildPlan.model_validate(fields)


def _folder(path: Path) -> Source:
    return Source(kind=SourceKind.HF_FOLDER, raw=str(path), path=path)


def test_the_build_takes_over_the_conversion_started_early(minilm_folder: Path, tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache")
    plan = _plan(_folder(minilm_folder))
    started = start_early(plan, cache)
    assert len(started.conversions) == 1
    process = next(iter(started.conversions.values()))._running._proc
    result = build(
        plan,
        parse_reference("early:latest"),
        store=Store(tmp_path / "store"),
        cache=cache,
        options=BuildOptions(verify=False),
        started=started,
    )
    assert started.conversions == {}  # taken by the convert stage ...
    assert process.returncode == 0  # ... which waited for it to finish (a stopped one is killed: -9)
    assert [v.variant.quantization for v in result.variants] == ["f16"]
    assert not list((tmp_path / "cache" / "convert").glob(".tmp*"))  # no scratch folder left


def test_a_conversion_nobody_takes_is_stopped(minilm_folder: Path, tmp_path: Path) -> None:
    started = start_early(_plan(_folder(minilm_folder), "q8_0"), BuildCache(tmp_path / "cache"))
    ((key, conversion),) = started.conversions.items()
    assert key[1] == "f16"  # a q8_0 variant is quantized from the f16 conversion
    started.cancel()
    assert started.conversions == {} and conversion._running._proc.returncode is not None
    assert not any((tmp_path / "cache" / "convert").iterdir())


def test_nothing_starts_for_a_gguf_source_or_a_folder_the_converter_refuses(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    cache = BuildCache(tmp_path / "cache")
    gguf = Source(kind=SourceKind.GGUF_FILE, raw=str(smollm2_gguf), path=smollm2_gguf)
    assert start_early(_plan(gguf), cache).conversions == {}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert start_early(_plan(_folder(empty)), cache).conversions == {}  # the stage reports it, in its turn
    assert not any((tmp_path / "cache" / "convert").iterdir())
