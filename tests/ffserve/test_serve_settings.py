"""Settings precedence and parsing, the Go template subset, and the scheduler with real models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ffruntime.gotemplate import TemplateError, render
from ffserve.errors import InsufficientMemory
from ffserve.metrics import Metrics
from ffserve.scheduler import Scheduler
from ffserve.settings import Settings, parse_bytes, parse_duration
from registry.store import Store


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1000", 1000), ("8GiB", 8 * 2**30), ("512MB", 512 * 10**6), ("1.5KiB", 1536), ("2g", 2 * 10**9)],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5m", 300.0), ("1h30m", 5400.0), ("-1", -1.0), ("0", 0.0), ("250ms", 0.25), ("-5m", -300.0),
     ("10", 10.0)],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "5 minutes", "m5", "1h30", "eight"])
def test_bad_durations_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_flags_beat_environment_beat_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "serve.toml"
    toml.write_text(
        'port = 1111\nmax_queue = 7\nkeep_alive = "10m"\nmodels = ["a", "b"]\nmax_memory = "1GiB"\n'
    )
    monkeypatch.setenv("FF_CONFIG", str(toml))
    monkeypatch.setenv("FF_PORT", "2222")
    monkeypatch.setenv("FF_API_KEYS", "k1, k2")
    s = Settings(max_queue=3)
    assert (s.port, s.max_queue, s.keep_alive, s.models) == (2222, 3, 600.0, ["a", "b"])
    assert s.max_memory == 2**30 and s.api_keys == ["k1", "k2"]
    monkeypatch.setenv("FF_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="no such file"):
        Settings()


def test_media_limits_reach_the_runtime_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_MAX_IMAGE_BYTES", "1MiB")
    monkeypatch.setenv("FF_MAX_AUDIO_SECONDS", "90")
    media = Settings().load_settings({}).media
    assert (media.image_bytes, media.audio_seconds) == (1 << 20, 90.0)
    assert media.image_pixels == 4096 * 4096  # the others keep their defaults
    monkeypatch.setenv("FF_MAX_MEDIA_ITEMS", "0")
    with pytest.raises(ValueError, match="max_media_items"):
        Settings()


def test_threads_and_graph_lanes_reach_the_runtime_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_NUM_THREADS", "8")
    monkeypatch.setenv("FF_GRAPH_LANES", "2")
    load = Settings().load_settings()
    assert (load.n_threads, load.n_lanes, load.n_lane_threads) == (8, 2, 4)


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("{{ .Prompt }}", {"Prompt": "hi"}, "hi"),
        ("{{ if .System }}S:{{ .System }} {{ end }}U:{{ .Prompt }}", {"System": "", "Prompt": "x"}, "U:x"),
        ("{{- if .System }}[{{ .System }}]{{ else }}none{{ end -}}  !", {"System": "s"}, "[s]!"),
        ("{{ range .Messages }}{{ if eq .Role \"user\" }}U{{ else if eq .Role \"system\" }}S"
         "{{ else }}A{{ end }}{{ .Content }};{{ end }}{{ $.System }}",
         {"System": "z", "Messages": [{"Role": "system", "Content": "a"}, {"Role": "user", "Content": "b"},
                                      {"Role": "assistant", "Content": "c"}]}, "Sa;Ub;Ac;z"),
    ],
)
def test_go_template_subset(template: str, values: dict[str, object], expected: str) -> None:
    assert render(template, values) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", ["{{ .Prompt | upper }}", "{{ if .X }}open", "{{ template \"x\" }}", "{{ len .M }}"]
)
def test_go_template_outside_the_subset_is_an_error(bad: str) -> None:
    with pytest.raises(TemplateError):
        render(bad, {"X": True, "Prompt": "p", "M": []})


def test_scheduler_evicts_lru_never_in_use_and_respects_budget(ff_home: Path) -> None:
    store = Store(ff_home / "store")

    async def scenario() -> None:
        settings = Settings(max_loaded_models=1, num_threads=1, num_ctx=256)
        sched = Scheduler(settings, store, Metrics())
        sched.start()
        try:
            await sched.get("smollm2")
            assert sched.is_loaded("smollm2")
            async with sched.slot("tiny"):  # evicts the idle smollm2
                assert not sched.is_loaded("smollm2") and sched.is_loaded("tiny")
                waiter = asyncio.ensure_future(sched.get("smollm2"))
                await asyncio.sleep(0.3)
                assert not waiter.done()  # tiny is in use: not evicted, the load waits
            model = await asyncio.wait_for(waiter, 30)
            assert model.name == "smollm2:latest" and not sched.is_loaded("tiny")
            assert [m.name for m in sched.loaded()] == ["smollm2:latest"]
        finally:
            await sched.close()
        assert sched.loaded() == []

        small = Scheduler(Settings(max_memory=1000, num_threads=1), store, Metrics())
        with pytest.raises(InsufficientMemory, match="FF_MAX_MEMORY"):
            await small.get("tiny")

    asyncio.run(scenario())


@pytest.mark.parametrize("value", ["inf", 1e309, "nan", "-inf"])
def test_keep_alive_must_be_finite(value: object) -> None:
    from pydantic import ValidationError

    from ffserve.wire.ollama import GenerateRequest

    with pytest.raises(ValidationError, match="finite"):
        GenerateRequest.model_validate({"model": "m", "keep_alive": value})


def test_huge_keep_alive_means_forever() -> None:
    from ffserve.wire.ollama import GenerateRequest

    assert GenerateRequest.model_validate({"model": "m", "keep_alive": 1e18}).keep_alive == -1.0
    assert GenerateRequest.model_validate({"model": "m", "keep_alive": "5m"}).keep_alive == 300.0


@pytest.mark.parametrize(("num_ctx", "loaded"), [(None, 320), (512, 512)])
def test_the_loaded_context_is_ff_num_ctx_else_the_parameter(
    tmp_path: Path, smollm2_gguf: Path, num_ctx: int | None, loaded: int
) -> None:
    """The one context rule (ffruntime.settings.context_length) with a real llama.cpp load."""
    from tests.models import add_model

    store = Store(tmp_path / "store")
    add_model(store, "ctx:latest", {"q4_1": smollm2_gguf}, params={"num_ctx": 320})

    async def scenario() -> int:
        sched = Scheduler(Settings(num_threads=1, num_ctx=num_ctx), store, Metrics())
        sched.start()
        try:
            return (await sched.get("ctx")).runtime.context_length
        finally:
            await sched.close()

    assert asyncio.run(scenario()) == loaded
