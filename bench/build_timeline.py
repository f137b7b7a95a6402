"""A timeline of one round of bench/build.py: when each phase ends, and how busy each core is meanwhile.

    python bench/build_timeline.py [--hf-folder PATH] [--no-baseline] [--no-verify]

Runs llama.cpp's converter + ``llama_model_quantize`` (q8_0, q4_k_m) as ``bench/build.py
--library-quantize`` does, then ``ff build`` (verified), sampling ``/proc/stat`` every 0.2 s: each line
says the busy share of every core and the cores this process tree used (``mine``), between the events
(baseline phases, ``ff build``'s progress lines). It shows which work runs beside which and where a core
idles (docs/benchmarks.md, "where the time goes").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build as bench  # bench/build.py: the same baseline and ff build commands


def _core_times() -> list[tuple[int, int]]:
    rows = []
    with open("/proc/stat", encoding="ascii") as f:
        for ln in f:
            if ln.startswith("cpu") and ln[3].isdigit():
                v = [int(x) for x in ln.split()[1:]]
                rows.append((sum(v), v[3] + v[4]))  # all, idle + iowait
    return rows


def _tree_cpu(root: int) -> float:
    """CPU seconds of process ``root`` and its descendants (their reaped children's included)."""
    stats: dict[int, tuple[int, float]] = {}  # pid → (parent, seconds)
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / tick)
    tree, total, grew = {root}, 0.0, True
    while grew:
        grew = False
        for pid, (parent, _) in stats.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    for pid in tree:
        total += stats.get(pid, (0, 0.0))[1]
    return total


class Sampler:
    """Core busy shares and this process tree's CPU use, every ``period`` seconds, in a thread."""

    def __init__(self, period: float = 0.2) -> None:
        self.period, self._stop = period, threading.Event()
        self.rows: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        prev, pt, pc = _core_times(), time.perf_counter(), _tree_cpu(me)
        while not self._stop.wait(self.period):
            cur, now, c = _core_times(), time.perf_counter(), _tree_cpu(me)
            busy = [1 - (ci - pi) / max(1, ct - pt_) for (ct, ci), (pt_, pi) in zip(cur, prev, strict=True)]
            cores = " ".join(f"{b * 100:3.0f}%" for b in busy)
            self.rows.append((now, f"cores {cores}  mine {(c - pc) / (now - pt) * 100:3.0f}%"))
            prev, pt, pc = cur, now, c

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def show(title: str, events: list[tuple[float, str]], rows: list[tuple[float, str]], t0: float) -> None:
    print(f"== {title}: {events[-1][0] - t0:.2f} s")
    for t, what in sorted([*events, *rows]):
        print(f"{t - t0:6.2f} {what}")


def baseline(hf: Path, work: Path) -> None:
    src = bench.llama_source() / "vendor" / "llama.cpp"
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
    f16 = work / "model-f16.gguf"
    events = []
    with Sampler() as s:
        t0 = time.perf_counter()
        script = [sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf), "--outtype", "f16"]
        bench._run([*script, "--outfile", str(f16)], env=env)
        events.append((time.perf_counter(), "converted (f16)"))
        for quant in ("Q8_0", "Q4_K_M"):
            bench._library_quantize(f16, work / f"model-{quant.lower()}.gguf", quant)
            events.append((time.perf_counter(), f"quantized {quant}"))
    show("llama.cpp convert + quantize", events, s.rows, t0)


def ff_build(hf: Path, work: Path, *, verify: bool) -> None:
    env = {**os.environ, "FF_HOME": str(work / "home"), "PYTHONPATH": str(bench.REPO)}
    cmd = [sys.executable, "-c", "from ffcli import main; main()", "build", "-f",
           str(bench.REPO / "modelfiles" / "smollm2"), "-t", "bench:latest", "--build-arg", f"SOURCE={hf}",
           "--quantize", "f16", "--quantize", "q8_0", "--quantize", "q4_k_m"]
    cmd += [] if verify else ["--no-verify"]
    events = []
    with Sampler() as s:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            events.append((time.perf_counter(), line.rstrip()[:120]))
        events.append((time.perf_counter(), f"exit {proc.wait()}"))
    show("ff build" + ("" if verify else " --no-verify"), events, s.rows, t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hf-folder", type=Path)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-verify", action="store_true", help="time ff build --no-verify instead")
    args = ap.parse_args()
    hf = args.hf_folder or bench.default_hf_folder()
    with tempfile.TemporaryDirectory(prefix="ff-timeline-") as tmp:
        if not args.no_baseline:
            baseline(hf, Path(tmp))
        ff_build(hf, Path(tmp), verify=not args.no_verify)


if __name__ == "__main__":
    main()
