"""Container limits from cgroup trees laid out as the kernel does (v2, v1, nested groups)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffruntime import cgroup, settings


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v2_the_tightest_quota_up_the_tree(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    tree(tmp_path / "fs", {
        "cgroup.controllers": "cpu memory",
        "kubepods/pod1/cpu.max": "150000 100000\n",  # the pod: 1.5 CPUs
        "kubepods/pod1/ctr/cpu.max": "max 100000\n",  # the container: no quota of its own
        "kubepods/pod1/memory.max": "max\n",
        "kubepods/pod1/ctr/memory.max": str(4 << 30),
        "kubepods/pod1/ctr/memory.current": str(3 << 30),
        "kubepods/pod1/ctr/memory.stat": f"anon 123\ninactive_file {1 << 30}\nactive_file 5\n",
    })
    assert cgroup.cpu_limit(tmp_path / "fs", proc) == 1.5
    # 4 GiB limit, 3 GiB used of which 1 GiB is reclaimable page cache: 2 GiB left
    assert cgroup.memory_room(tmp_path / "fs", proc) == 2 << 30


def test_v2_without_limits(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    files = {"cgroup.controllers": "cpu memory", "cpu.max": "max 100000\n", "memory.max": "max\n"}
    tree(tmp_path / "fs", files)
    assert cgroup.cpu_limit(tmp_path / "fs", proc) is None
    assert cgroup.memory_room(tmp_path / "fs", proc) is None


def test_v1_docker_layout(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    tree(tmp_path / "fs", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "200000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "memory/docker/abc/memory.limit_in_bytes": str(1 << 30),
        "memory/docker/abc/memory.usage_in_bytes": str(256 << 20),
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # the root: unlimited
        "memory/memory.usage_in_bytes": str(8 << 30),
    })
    assert cgroup.cpu_limit(tmp_path / "fs", proc) == 2.0
    assert cgroup.memory_room(tmp_path / "fs", proc) == (1 << 30) - (256 << 20)


def test_unreadable_means_unknown(tmp_path: Path) -> None:
    assert cgroup.cpu_limit(tmp_path, tmp_path / "missing") is None
    assert cgroup.memory_room(tmp_path, tmp_path / "missing") is None


@pytest.mark.parametrize(("quota", "expected"), [(None, 2), (0.5, 1), (1.5, 1), (8.0, 2)])
def test_cores_are_capped_by_the_quota(monkeypatch: pytest.MonkeyPatch, quota: float | None,
                                       expected: int) -> None:
    monkeypatch.setattr(settings.os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.setattr(cgroup, "cpu_limit", lambda: quota)
    assert settings.available_cores() == expected


def test_memory_is_capped_by_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroup, "memory_room", lambda: 512 << 20)
    assert settings.available_memory() == 512 << 20  # this machine has more than 512 MiB available
    monkeypatch.setattr(cgroup, "memory_room", lambda: None)
    assert settings.available_memory() > 512 << 20
