"""One settings type and one thread rule for the verify stage, ff run and ff serve."""

from __future__ import annotations

import os

import pytest

from ffruntime.settings import LoadSettings, default_threads
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
    ls = Settings(num_ctx=4096, num_parallel=3, num_threads=2).load_settings()
    assert (ls.num_ctx, ls.num_parallel, ls.threads) == (4096, 3, 2)
