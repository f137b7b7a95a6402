"""Build subprocesses tethered to ff: they end when the ff process that started them dies, however it dies.

The converter scripts and ONNX Runtime GenAI's model builder run for seconds to minutes in a subprocess.
When ff ends normally it stops them (``cancel``), but a ``SIGKILL`` (the OOM killer, ``kill -9``, a CI
timeout) runs no code of ff's, and an orphaned converter kept running, writing a GGUF nobody would read.
``PR_SET_PDEATHSIG`` does not cover it: it fires when the *thread* that started the child exits, and ff
starts builds from worker threads (``/api/create``, verify ahead).

So :class:`Tethered` starts a tiny launcher of ours (``python -c``, :data:`LAUNCHER`) that holds the read
end of a pipe whose only write end stays in ff. A watchdog thread in the launcher blocks on that pipe;
the kernel closes ff's end when ff dies by any means, the read returns EOF, and the watchdog removes the
partial output it was told about (``remove``) and kills the launcher's process group (the launcher leads
its own, so whatever the script started goes too). The launcher then runs the real script or module in
its own process by :mod:`runpy` (``sys.argv`` and ``sys.path[0]`` as ``python script.py`` / ``python -m``
would set them); the third-party script is not changed. The launcher imports only the standard library,
so it needs no ``PYTHONPATH`` to ff.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

LAUNCHER: Final = """\
import json, os, runpy, shutil, signal, sys, threading
_fd, _remove, _kind, _target = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
def _watch():
    while True:
        try:
            if not os.read(_fd, 512):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    for p in _remove:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=_watch, name="ff-tether", daemon=True).start()
sys.argv = [_target, *sys.argv[5:]]
if _kind == "module":
    runpy.run_module(_target, run_name="__main__", alter_sys=True)
else:
    sys.path[0] = os.path.dirname(os.path.abspath(_target))
    runpy.run_path(_target, run_name="__main__")
"""
"""The launcher (``python -c``): ``argv`` is the pipe's fd, the paths to remove (JSON), ``path`` or
``module``, the script or module, then the script's own arguments."""

Kind = Literal["path", "module"]


class Tethered(subprocess.Popen[str]):
    """``subprocess.Popen`` of a Python script (``kind="path"``) or module (``kind="module"``) through
    :data:`LAUNCHER`: the child ends, and ``remove`` (files or folders: its partial output) is deleted,
    when this process dies. Text mode; other keyword arguments go to ``Popen`` (not ``pass_fds``,
    ``process_group``, ``start_new_session``). The pipe's write end closes once :meth:`wait` has seen the
    child end (``communicate`` and ``with`` call it), or when the object is collected."""

    def __init__(
        self,
        target: str | Path,
        args: Sequence[str],
        *,
        kind: Kind = "path",
        remove: Sequence[Path] = (),
        **kwargs: Any,
    ) -> None:
        read_end, write_end = os.pipe()  # both close-on-exec; pass_fds hands the read end to the child only
        self._untether = weakref.finalize(self, os.close, write_end)
        argv = [sys.executable, "-c", LAUNCHER, str(read_end), json.dumps([str(p) for p in remove])]
        try:
            super().__init__(
                [*argv, kind, str(target), *args], pass_fds=(read_end,), process_group=0, text=True, **kwargs
            )
        except BaseException:
            self._untether()
            raise
        finally:
            os.close(read_end)

    def kill(self) -> None:
        """SIGKILL the child's process group (the script and whatever it started), unless already reaped."""
        self.poll()
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        self._untether()
        return code


def run(
    target: str | Path,
    args: Sequence[str],
    *,
    kind: Kind = "path",
    remove: Sequence[Path] = (),
    input: str | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Like ``subprocess.run(..., capture_output=True, text=True)`` for a :class:`Tethered` child; an
    exception here (``KeyboardInterrupt``) kills it first."""
    stdin = subprocess.PIPE if input is not None else None
    with Tethered(
        target,
        args,
        kind=kind,
        remove=remove,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    ) as proc:
        try:
            out, err = proc.communicate(input)
        except BaseException:
            proc.kill()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
