"""The limits of this process's control group: the CPU quota and the memory limit a container runtime
sets (Kubernetes' ``resources.limits.cpu`` / ``.memory``), which neither ``sched_getaffinity`` nor
``/proc/meminfo`` shows. A pod limited to 2 CPUs on a 64-core node sees 64 cores and the node's memory;
a llama.cpp decode on 64 threads under a 2-CPU quota is throttled at every barrier, and slots sized
from the node's memory get the pod OOM-killed.

Both cgroup layouts are read from ``/proc/self/cgroup``: v2 (``0::<path>``: ``cpu.max``, ``memory.max``,
``memory.current``) and v1 (one hierarchy per controller: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``,
``memory.limit_in_bytes`` / ``memory.usage_in_bytes``). The process's group and every parent up to the
mount count (a limit on a parent binds too); inside a container, whose namespace makes its own group
the root, that is the mount's root. Anything unreadable means no limit known (``None``).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
_UNLIMITED_V1 = 1 << 60  # v1 writes "no limit" as a page-rounded 2**63 - 1


def _groups(controller: str, root: Path, proc: Path) -> list[Path]:
    """The folders of this process's group for ``controller`` (v1) or the unified tree (v2), from the
    group up to the mount's root, those that exist."""
    try:
        lines = proc.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if hierarchy == "0" and not names:
            base = root if (root / "cgroup.controllers").exists() else root / "unified"
        elif controller in names.split(","):
            base = root / names if (root / names).is_dir() else root / controller
        else:
            continue
        folder, found = base / path.strip("/"), []
        while True:
            if folder.is_dir():
                found.append(folder)
            if folder == base or base not in folder.parents:
                return found
            folder = folder.parent
    return []


def _read_ints(folder: Path, *names: str) -> list[int] | None:
    try:
        return [int((folder / name).read_text(encoding="ascii").split()[0]) for name in names]
    except (OSError, ValueError, IndexError):
        return None


def cpu_limit(root: Path = ROOT, proc: Path = PROC_CGROUP) -> float | None:
    """CPUs the group may use (quota / period, the tightest up the tree); ``None``: no quota."""
    limits: list[float] = []
    for folder in _groups("cpu", root, proc):
        try:
            quota, period = (folder / "cpu.max").read_text(encoding="ascii").split()[:2]
        except (OSError, ValueError):
            v1 = _read_ints(folder, "cpu.cfs_quota_us", "cpu.cfs_period_us")
            if v1 is not None and v1[0] > 0 and v1[1] > 0:
                limits.append(v1[0] / v1[1])
            continue
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _inactive_file(folder: Path) -> int:
    """Page cache the kernel reclaims before it OOM-kills (what Kubernetes leaves out of a working set)."""
    try:
        for line in (folder / "memory.stat").read_text(encoding="ascii").splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def memory_room(root: Path = ROOT, proc: Path = PROC_CGROUP) -> int | None:
    """Bytes the group may still take (its limit less its working set, the tightest up the tree);
    ``None``: no limit."""
    rooms: list[int] = []
    for folder in _groups("memory", root, proc):
        v2 = (folder / "memory.max").exists()
        used_limit = (
            _read_ints(folder, "memory.max", "memory.current")
            if v2
            else _read_ints(folder, "memory.limit_in_bytes", "memory.usage_in_bytes")
        )
        if used_limit is None or used_limit[0] >= _UNLIMITED_V1:
            continue  # "max" does not parse as a number: no limit at this level
        limit, usage = used_limit
        rooms.append(max(0, limit - max(0, usage - _inactive_file(folder))))
    return min(rooms) if rooms else None
