"""One settings type and one thread rule for the verify stage, ff run and ff serve."""

from __future__ import annotations

import os

import pytest

from ffruntime.settings import DEFAULT_NUM_CTX, LoadSettings, context_length, default_threads
from ffserve.settings import Settings


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_default_threads_leave_a_core_to_the_caller(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    assert default_threads() == threads
    assert LoadSettings().n_threads == threads
    assert Settings().load_settings().n_threads == threads
    assert Settings(num_threads=5).load_settings().n_threads == 5


def test_server_settings_map_onto_load_settings() -> None:
    assert Settings().num_parallel == 0  # chosen per model (ffruntime.settings.parallel_slots)
    ls = Settings(num_ctx=4096, num_parallel=3, num_threads=2).load_settings()
    assert (ls.num_ctx, ls.num_parallel, ls.threads) == (4096, 3, 2)


@pytest.mark.parametrize(
    ("given", "params", "expected"),
    [
        (None, {}, DEFAULT_NUM_CTX),  # neither the user nor the model says
        (None, {"num_ctx": 512}, 512),  # the model's PARAMETER
        (None, {"num_ctx": "768"}, 768),
        (4096, {"num_ctx": 512}, 4096),  # the user's setting (FF_NUM_CTX, --num-ctx) wins
        (64, {}, 64),
    ],
)
def test_one_context_rule_for_run_and_serve(
    given: int | None, params: dict[str, object], expected: int
) -> None:
    assert context_length(given, params) == expected
    # ff serve (its settings) and ff run (LoadSettings.for_model with no --num-ctx) load alike
    assert Settings(num_ctx=given).load_settings(params).num_ctx == expected
    assert LoadSettings.for_model(params, num_ctx=given, threads=1).num_ctx == expected
    if given is None:
        # but for the slots: the server chooses them (0), ff run has one user (1)
        assert Settings().load_settings(params) == LoadSettings.for_model(params).with_(num_parallel=0)
        assert LoadSettings.for_model(params).num_parallel == 1


@pytest.mark.parametrize("bad", [0, -5, "many", 2.5, True, [1]])
def test_a_bad_num_ctx_parameter_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="PARAMETER num_ctx"):
        context_length(None, {"num_ctx": bad})
    assert context_length(256, {"num_ctx": bad}) == 256  # the user's setting does not read it


def test_batch_threads_default_to_the_threads() -> None:
    from ffruntime.llamacpp.library import context_params

    assert LoadSettings(threads=3).n_threads_batch == 3
    p = context_params(LoadSettings(threads=1, threads_batch=2), n_ctx=64)
    assert (p.n_threads, p.n_threads_batch) == (1, 2)


@pytest.mark.parametrize(("preset", "seen"), [(None, "unset"), ("ACTIVE", "ACTIVE")])
def test_openmp_wait_policy_is_left_as_the_environment_has_it(preset: str | None, seen: str) -> None:
    import os
    import subprocess
    import sys

    code = ("import os; from ffruntime.llamacpp.library import binding; binding(); "
            "print(os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip().splitlines()[-1] == seen


def test_automatic_slots_from_the_kv_cache_and_the_memory_left() -> None:
    from ffruntime.settings import AUTO_PARALLEL, LOAD_OVERHEAD, parallel_slots

    mb = 2**20
    assert parallel_slots(100 * mb, 47 * mb, 0) == AUTO_PARALLEL  # budget unknown
    assert parallel_slots(100 * mb, 47 * mb, 16 * 1024 * mb) == AUTO_PARALLEL
    room = 100 * mb + LOAD_OVERHEAD + 2 * 3 * 47 * mb  # half of what is left holds 3 slots
    assert parallel_slots(100 * mb, 47 * mb, room) == 3
    assert parallel_slots(100 * mb, 47 * mb, 50 * mb) == 1  # at least one
