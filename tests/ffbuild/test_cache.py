"""The build cache: keys, hits, atomic entries that survive kill -9 and concurrent builds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ffbuild.cache import BuildCache, CacheValue, file_digest, folder_digest, stage_key

KEY_CASES = [
    ("stage name", stage_key("convert", src="a"), stage_key("quantize", src="a")),
    ("input digest", stage_key("quantize", src="a", q="q8_0"), stage_key("quantize", src="b", q="q8_0")),
    ("option", stage_key("quantize", src="a", q="q8_0"), stage_key("quantize", src="a", q="q4_k_m")),
    ("tool version", stage_key("x", tools={"llama": "1"}), stage_key("x", tools={"llama": "2"})),
]


@pytest.mark.parametrize(("what", "a", "b"), KEY_CASES, ids=[c[0] for c in KEY_CASES])
def test_key_changes_with_every_input(what: str, a: str, b: str) -> None:
    assert a != b
    assert len(a) == 64


def test_key_ignores_argument_order() -> None:
    assert stage_key("s", a=1, b=[1, 2]) == stage_key("s", b=[1, 2], a=1)


def test_second_run_is_a_hit_and_does_no_work(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache")
    calls: list[Path] = []

    def produce(folder: Path) -> dict[str, CacheValue]:
        calls.append(folder)
        (folder / "out.bin").write_bytes(b"result")
        return {"n": 1}

    key = stage_key("quantize", src="x")
    entry, hit = cache.run("quantize", key, produce)
    assert not hit and len(calls) == 1
    again, hit2 = BuildCache(tmp_path / "cache").run("quantize", key, produce)
    assert hit2 and len(calls) == 1
    assert again.path == entry.path and again.file("out.bin").read_bytes() == b"result"
    assert again.meta == {"n": 1}


def test_failed_stage_leaves_no_entry(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache")

    def produce(folder: Path) -> dict[str, CacheValue]:
        (folder / "half").write_bytes(b"partial")
        raise RuntimeError("tool crashed")

    key = stage_key("convert", src="y")
    with pytest.raises(RuntimeError):
        cache.run("convert", key, produce)
    assert cache.get("convert", key) is None
    assert list((tmp_path / "cache" / "convert").iterdir()) == []


_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ffbuild.cache import BuildCache
    root, key, marker, sleep = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])

    def produce(folder):
        with open(marker, "a") as f:
            f.write("produce\\n")
        (folder / "out.bin").write_bytes(b"x" * 1000)
        time.sleep(sleep)
        return {"ok": True}

    BuildCache(Path(root)).run("quantize", key, produce)
    """
)


def _worker(tmp_path: Path, key: str, sleep: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(tmp_path / "cache"), key, str(tmp_path / "marker"), str(sleep)],
        env=env,
    )


def _wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_kill_9_mid_stage_leaves_no_entry_and_next_run_completes(tmp_path: Path) -> None:
    key = stage_key("quantize", src="kill")
    proc = _worker(tmp_path, key, sleep=60)
    _wait_for(tmp_path / "marker")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stage_dir = tmp_path / "cache" / "quantize"
    assert not (stage_dir / key).exists()
    assert next(p.name for p in stage_dir.iterdir()).startswith(".tmp-")  # the dead build's temp folder
    cache = BuildCache(tmp_path / "cache")  # opening the cache clears temp folders of dead builds
    assert list(stage_dir.iterdir()) == []
    assert cache.get("quantize", key) is None
    entry, hit = cache.run("quantize", key, lambda folder: {"again": True})
    assert not hit and entry.meta == {"again": True}


def test_concurrent_builds_of_one_key_produce_once(tmp_path: Path) -> None:
    key = stage_key("quantize", src="race")
    procs = [_worker(tmp_path, key, sleep=1.0) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    assert (tmp_path / "marker").read_text().count("produce") == 1
    entry = BuildCache(tmp_path / "cache").get("quantize", key)
    assert entry is not None and entry.file("out.bin").stat().st_size == 1000


def test_file_and_folder_digests(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "w.safetensors").write_bytes(b"abc")
    d1 = folder_digest(tmp_path / "m")
    assert file_digest(tmp_path / "m" / "w.safetensors") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    time.sleep(0.01)
    (tmp_path / "m" / "w.safetensors").write_bytes(b"abd")
    assert folder_digest(tmp_path / "m") != d1
    (tmp_path / "m" / "w.safetensors").write_bytes(b"abc")
    (tmp_path / "m" / "extra.txt").write_text("more")
    assert folder_digest(tmp_path / "m") != d1


def test_clear_removes_entries_and_a_rerun_produces_again(tmp_path: Path) -> None:
    cache = BuildCache(tmp_path / "cache")
    calls: list[str] = []

    def produce(folder: Path) -> dict[str, CacheValue]:
        calls.append(folder.name)
        (folder / "out.bin").write_bytes(b"x" * 100)
        return {}

    for src in ("a", "b"):
        cache.run("quantize", stage_key("quantize", src=src), produce)
    assert cache.clear() == (2, 100 * 2 + 2 * len(b"{}"))
    assert cache.get("quantize", stage_key("quantize", src="a")) is None
    cache.run("quantize", stage_key("quantize", src="a"), produce)
    assert len(calls) == 3
