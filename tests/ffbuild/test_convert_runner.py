"""The converter runner (:mod:`ffbuild.stages.convert.runner`) on small scripts of its own: output drained
while the caller is busy, failures quoted, cancel."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ffbuild.stages.convert.runner import Running
from ffbuild.stages.convert.source import LlamaCppSource
from ffbuild.stages.errors import ConvertError


def _source(tmp_path: Path, script: str, body: str) -> LlamaCppSource:
    folder = tmp_path / "vendor" / "llama.cpp"
    folder.mkdir(parents=True)
    (folder / script).write_text(body)
    return LlamaCppSource(tmp_path, "test")


def test_a_script_logging_more_than_a_pipe_holds_finishes_before_finish_is_called(tmp_path: Path) -> None:
    # 4,000 tensor lines (~400 KB) are several pipe buffers: unread, the script would block on its writes
    line = "INFO:hf-to-gguf:blk.{i}.attn_q.weight, torch.float32 --> F16, shape = {{64, 64}}"
    src = _source(tmp_path, "talk.py", f"for i in range(4000):\n    print({line!r}.format(i=i))\n")
    reports: list[str] = []
    running = Running(src, "talk.py", [], what="talk", report=reports.append)
    deadline = time.monotonic() + 30
    while running._proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running._proc.returncode == 0, "the script waited on its output pipe"
    running.finish()
    assert reports and reports[0].startswith("talk: ")


def test_a_failing_script_is_quoted(tmp_path: Path) -> None:
    body = "print('INFO:x:working')\nraise SystemExit('ERROR:x:no tokenizer here')\n"
    src = _source(tmp_path, "fail.py", body)
    with pytest.raises(ConvertError, match="no tokenizer here"):
        Running(src, "fail.py", [], what="fail").finish()


def test_cancel_stops_a_running_script(tmp_path: Path) -> None:
    src = _source(tmp_path, "slow.py", "import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    running = Running(src, "slow.py", [], what="slow")
    t0 = time.monotonic()
    running.cancel()
    assert running._proc.returncode is not None
    assert time.monotonic() - t0 < 10
