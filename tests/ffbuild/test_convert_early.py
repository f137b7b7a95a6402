"""The converter started right after planning (:mod:`ffbuild.stages.convert.early`) and the build."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from ffbuild import cache as cache_module
from ffbuild.build import BuildOptions, build
from ffbuild.cache import BuildCache
from ffbuild.plan import BuildPlan, Source, SourceKind, Variant
from ffbuild.stages.convert import stage, start_conversion
from ffbuild.stages.convert.early import start_early
from registry.choices import variant_family
from registry.reference import parse_reference
from registry.store import Store


def _plan(source: Source, quantization: str = "f16") -> BuildPlan:
    family = variant_family("embed", "llamacpp")
    variant = Variant(quantization=quantization, device="cpu", backend="llamacpp", family=family)
    fields: dict[str, object] = {"modelfile": None, "context": Path("/"), "source": source}
    fields["variants"] = (variant,)
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
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}', encoding="utf-8")
    assert start_early(_plan(_folder(no_weights)), cache).conversions == {}  # the stage reports it
    assert not any((tmp_path / "cache" / "convert").iterdir())  # its scratch folder went too


def test_a_cached_rebuild_starts_no_converter(
    minilm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, store = BuildCache(tmp_path / "cache"), Store(tmp_path / "store")
    plan, ref = _plan(_folder(minilm_folder)), parse_reference("early:latest")
    assert not cache.knows_folder(minilm_folder)
    first = build(plan, ref, store=store, cache=cache, options=BuildOptions(verify=False))
    assert cache.knows_folder(minilm_folder)  # every file's sha256 remembered by (inode, size, times)
    starts: list[Path] = []
    real = start_conversion

    def counted(folder: Path, *args: Any, **kwargs: Any) -> Any:
        starts.append(folder)
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(stage, "start_conversion", counted)
    started = start_early(plan, cache)
    assert started.conversions == {}
    again = build(plan, ref, store=store, cache=cache, options=BuildOptions(verify=False), started=started)
    assert starts == [] and again.index_digest == first.index_digest and again.cache_misses == 0
    BuildCache(tmp_path / "cache").clear()  # forgets the digests too
    assert not cache.knows_folder(minilm_folder)


def test_a_remembered_digest_is_the_file_s_own_and_follows_changes(
    minilm_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BuildCache(tmp_path / "cache")
    config = minilm_folder / "config.json"
    assert cache.known_digest(config) is None
    digest = cache.source_digest(config)
    assert digest == "sha256:" + hashlib.sha256(config.read_bytes()).hexdigest() == cache.known_digest(config)
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"x" * 1000)
    cache.source_digest(fresh)
    assert cache.known_digest(fresh) is None  # changed just now: a write in the same tick could hide
    monkeypatch.setattr(cache_module, "_SETTLED_NS", -(10**12))  # as if it had settled
    cache.source_digest(fresh)
    assert cache.known_digest(fresh) == "sha256:" + hashlib.sha256(b"x" * 1000).hexdigest()
    time.sleep(0.05)  # past the file system's timestamp tick (the race the settling guards against)
    fresh.write_bytes(b"y" * 1000)  # the same size, new times: not the remembered file any more
    assert cache.known_digest(fresh) is None
