"""Build subprocesses end with ff (:mod:`ffbuild.stages.tether`): a real ``ff build`` of a tiny random model
killed with SIGKILL while llama.cpp's converter runs leaves no converter and no scratch behind, and the
next build succeeds; the launcher on its own, started from a worker thread of a parent that is killed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ffbuild.stages.convert.source import CONVERT_SCRIPT
from tests.models import DECODER_RECIPE, RECIPE, cached_dir, random_decoder

REPO = Path(__file__).resolve().parents[2]
GONE_WITHIN = 3.0
"""Seconds the converter may outlive ff: its watchdog sees EOF at once (a converter left running takes
its whole conversion, and its scratch folder stays until the next build)."""


def _children(pid: int) -> dict[int, str]:
    """The live (not zombie) children of ``pid``: pid → command line."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; its new parent may not reap it at once


def _wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return True
        time.sleep(0.02)
    return False


def _tiny_decoder(smollm2_hf: Path) -> Path:
    key = f"family-qwen3-tf{importlib.metadata.version('transformers')}-r{RECIPE}-{DECODER_RECIPE}"
    return cached_dir(key, "qwen3", lambda d: random_decoder("qwen3", smollm2_hf, d))


def _ff_build(home: Path, modelfile: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": "127.0.0.1:9", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(modelfile), "-t", "tiny:1", "--json"]
    cmd += ["--threads", "1"]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_build_leaves_no_converter_and_the_next_build_succeeds(
    smollm2_hf: Path, tmp_path: Path
) -> None:
    folder = _tiny_decoder(smollm2_hf)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f"FROM {folder}\nQUANTIZE f16\nTASK generate\n")
    home = tmp_path / "ff"
    build = _ff_build(home, modelfile)
    converters: dict[int, str] = {}
    try:
        assert _wait_until(
            lambda: (
                converters.update({p: c for p, c in _children(build.pid).items() if CONVERT_SCRIPT in c})
                or bool(converters)
            ),
            120,
        ), "the build never started the converter"
        build.send_signal(signal.SIGKILL)
        build.wait(30)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
        build.stdout.close()  # type: ignore[union-attr]
        build.stderr.close()  # type: ignore[union-attr]
    (converter,) = converters
    t0 = time.monotonic()
    assert _wait_until(lambda: not _alive(converter), GONE_WITHIN), "the converter outlived the killed build"
    print(f"converter gone {time.monotonic() - t0:.2f} s after the build was killed")
    scratch = home / "cache" / "convert"
    assert _wait_until(lambda: not list(scratch.glob(".tmp-*")), GONE_WITHIN), list(scratch.iterdir())

    again = _ff_build(home, modelfile)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out + err
    assert json.loads(out)["tags"][0] == "tiny:1"


SLEEPER = """\
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(600)
"""
PARENT = """\
import sys, threading, time
from pathlib import Path
from ffbuild.stages.tether import Tethered
partial = Path(sys.argv[1]); partial.mkdir(); (partial / "half.gguf").write_bytes(b"x")
def start():
    proc = Tethered(sys.argv[2], [], remove=[partial])
    print(proc.pid, flush=True)
    proc.wait()
threading.Thread(target=start).start()
time.sleep(600)
"""


def test_the_launcher_ends_its_script_and_removes_its_output_when_the_parent_is_killed(
    tmp_path: Path,
) -> None:
    # started from a worker thread (PR_SET_PDEATHSIG would follow that thread, not the process)
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    partial = tmp_path / "scratch"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(partial), str(script)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _wait_until(lambda: bool(_children(child)), 30), "the script's own subprocess did not start"
    (grandchild,) = _children(child)
    assert _alive(child) and partial.is_dir()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    assert _wait_until(lambda: not _alive(child) and not _alive(grandchild), GONE_WITHIN)
    assert not partial.exists()


def test_a_tethered_script_runs_as_python_would_run_it(tmp_path: Path) -> None:
    from ffbuild.stages import tether

    (tmp_path / "helper_mod.py").write_text("VALUE = 'beside the script'\n")
    script = tmp_path / "show.py"
    script.write_text(
        "import sys, helper_mod\nprint(__name__, sys.argv[1:], helper_mod.VALUE)\nsys.exit(3)\n"
    )
    proc = tether.run(script, ["a", "--b"], cwd=REPO)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "__main__ ['a', '--b'] beside the script"
    mod = tether.run("json.tool", ["--compact"], kind="module", input='{"a": 1}', cwd=tmp_path)
    assert (mod.returncode, mod.stdout.strip()) == (0, '{"a":1}'), mod.stderr
