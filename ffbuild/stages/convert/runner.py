"""Running one of llama.cpp's converter scripts in a subprocess: progress out, its errors in ff's words.

The scripts log one line per tensor (``INFO:hf-to-gguf:blk.0.attn_q.weight, torch.bfloat16 --> F16,
shape = {…}``) and a ``Writing: 45%|…`` bar; :func:`run_script` turns them into progress messages
(at most a few a second). When the script fails, the error quotes its own message: the last line of
its traceback, or what it logged as an error; ``Model X is not supported`` becomes an
:class:`~ffbuild.stages.errors.UnsupportedArchitectureError` listing what the converter does support.
"""

from __future__ import annotations

import functools
import os
import queue
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from ffbuild.stages import tether
from ffbuild.stages.convert.source import CONVERT_SCRIPT, LlamaCppSource
from ffbuild.stages.errors import ConvertError, UnsupportedArchitectureError
from ffbuild.stages.tether import Tethered

Report = Callable[[str], None]

_TENSOR: Final = re.compile(r"^INFO:[\w-]+:(\S+?),\s+torch\.\w+ --> (\w+), shape")
_WRITING: Final = re.compile(r"Writing:\s+(\d+)%")
_UNSUPPORTED: Final = re.compile(r"Model (\S+) is not supported|Architecture '([^']+)' not supported")
_ERROR_LINE: Final = re.compile(r"^(?:ERROR:[\w-]+:|\w+(?:\.\w+)*(?:Error|Exception): )")
_INTERVAL: Final = 0.5


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the script finds its own gguf-py
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_MININTERVAL": "0.5"})
    return env


def _failure(lines: list[str]) -> str:
    """The converter's own words for why it failed: its error lines, else the traceback's last line."""
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    chosen = errors[-3:] if errors else [ln for ln in lines if ln.strip()][-3:]
    return "\n  ".join(re.sub(r"^ERROR:[\w-]+:", "", ln).strip() for ln in chosen) or "(no output)"


class _Progress:
    def __init__(self, report: Report | None, what: str) -> None:
        self.report, self.what, self.tensors, self.last = report, what, 0, 0.0

    def line(self, text: str) -> None:
        if self.report is None:
            return
        if _TENSOR.match(text):
            self.tensors += 1
            msg = f"{self.what}: {self.tensors} tensors planned"
        elif m := _WRITING.search(text):
            msg = f"{self.what}: writing {m.group(1)}%"
        else:
            return
        now = time.monotonic()
        if now - self.last >= _INTERVAL:
            self.last = now
            self.report(msg)


class Running:
    """A converter script started in a subprocess; :meth:`finish` follows it to the end (progress, errors),
    :meth:`cancel` stops it. Started early, it runs while the caller does other work (the convert stage
    computes its cache key meanwhile): a reader thread drains its output from the start, so a script
    that logs more than a pipe holds (one line per tensor) never waits for the caller, and
    :meth:`finish` reports the lines on the caller's thread."""

    def __init__(
        self,
        source: LlamaCppSource,
        script: str,
        args: list[str],
        *,
        what: str,
        report: Report | None = None,
        remove: Sequence[Path] = (),
    ) -> None:
        self.source, self.script, self.args, self.what = source, script, args, what
        self._progress = _Progress(report, what)
        # tethered: it ends, and ``remove`` (its partial output) goes, when ff dies, even by SIGKILL
        self._proc = Tethered(
            source.script(script),
            args,
            remove=remove,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=source.llama_cpp,
        )
        self._lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # None: the output ended
        self._reader = threading.Thread(target=self._read, name=f"ff-{script}-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        try:
            for raw in stdout:
                self._lines.put(raw.rstrip("\n"))
        except (OSError, ValueError):  # the pipe closed by cancel()
            pass
        finally:
            self._lines.put(None)

    def report_to(self, report: Report | None) -> None:
        """Send the progress :meth:`finish` reads to ``report`` (for a script started before its caller
        had somewhere to report to)."""
        self._progress.report = report

    def finish(self) -> None:
        """Wait for the script; raise :class:`ConvertError` quoting its failure."""
        proc = self._proc
        tail: deque[str] = deque(maxlen=60)
        with proc:
            while (text := self._lines.get()) is not None:
                tail.append(text)
                self._progress.line(text)
            self._reader.join()
            code = proc.wait()
        if code == 0:
            return
        lines = list(tail)
        for ln in lines:
            if m := _UNSUPPORTED.search(ln):
                arch = m.group(1) or m.group(2)
                mmproj = "--mmproj" in self.args
                raise UnsupportedArchitectureError(
                    arch, supported_architectures(self.source, mmproj=mmproj), mmproj
                )
        raise ConvertError(
            f"llama.cpp's {self.script} (llama-cpp-python {self.source.version}) failed on {self.what}:\n  "
            f"{_failure(lines)}"
        )

    def cancel(self) -> None:
        """Stop the script if it still runs (its output is not wanted); nothing once it finished."""
        proc = self._proc
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        self._reader.join()  # the killed script's pipe ends, so the reader does too
        if proc.stdout is not None:
            proc.stdout.close()


def run_script(
    source: LlamaCppSource,
    script: str,
    args: list[str],
    *,
    what: str,
    report: Report | None = None,
    remove: Sequence[Path] = (),
) -> None:
    """Run ``script`` of ``source`` with ``args``; raise :class:`ConvertError` quoting its failure.
    ``remove``: its partial output, deleted by the script's launcher should ff die while it runs."""
    running = Running(source, script, args, what=what, report=report, remove=remove)
    try:
        running.finish()
    finally:
        running.cancel()


def supported_architectures(source: LlamaCppSource, *, mmproj: bool = False) -> tuple[str, ...]:
    """The Hugging Face architectures the converter registers (text models, or projectors)."""
    return _registered(source.llama_cpp)[1 if mmproj else 0]


@functools.cache
def _registered(llama_cpp: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    proc = tether.run(llama_cpp / CONVERT_SCRIPT, ["--print-supported-models"], env=_env(), cwd=llama_cpp)
    text: list[str] = []
    mmproj: list[str] = []
    into = text
    for ln in (proc.stderr + proc.stdout).splitlines():
        if ln.startswith("MMPROJ models"):
            into = mmproj
        elif ln.startswith("TEXT models"):
            into = text
        elif ln.startswith("  - "):
            into.append(ln[4:].strip())
    return tuple(text), tuple(mmproj)
