"""Graceful shutdown, `ff serve` / `ff ps` from the real ``ff`` command."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.ffserve.serve_testkit import ROOT, Server, free_port


def test_sigterm_drains_the_stream_in_flight(ff_home: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"FF_HOME": str(ff_home), "FF_NUM_THREADS": "2", "FF_QUANTIZE": "q8_0", "PYTHONPATH": str(ROOT),
           "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    ff = shutil.which("ff")
    assert ff is not None, "the ff command is not installed (pip install -e .)"
    proc = subprocess.Popen([ff, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": "smollm2", "prompt": "Once upon a time", "raw": True, "options": {"num_predict": 40}}
        lines = []
        with httpx.stream("POST", url + "/api/generate", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if not lines:
                    proc.send_signal(signal.SIGTERM)  # mid-stream
                lines.append(json.loads(line))
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 40, lines[-1]
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "unloading smollm2:latest" in text and "Traceback" not in text, text[-3000:]


def test_ff_ps_lists_loaded_models(server: Server) -> None:
    httpx.post(server.url + "/api/generate", json={"model": "smollm2", "prompt": ""}, timeout=60)
    host = server.url.removeprefix("http://")
    out = subprocess.run(["ff", "ps", "--host", host], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.splitlines()
    assert header.split()[:3] == ["NAME", "ID", "SIZE"]
    assert any(r.startswith("smollm2:latest ") for r in rows), out.stdout
    cmd = ["ff", "ps", "--host", host, "--json"]
    as_json = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "smollm2:latest" in {m["name"] for m in json.loads(as_json.stdout)["models"]}
    down = subprocess.run(["ff", "ps", "--host", f"127.0.0.1:{free_port()}"], capture_output=True, text=True)
    assert down.returncode != 0 and "cannot reach ff serve" in down.stderr
