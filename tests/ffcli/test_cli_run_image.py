"""``ff run --image FILE``: the tiny random Qwen2-VL (two FROM lines) answers about an image, here
(``--local``) and through ``ff serve`` alike; a text-only model refuses the image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from registry.store import Store
from tests.ffserve.serve_testkit import start_server
from tests.models import add_model

pytestmark = pytest.mark.slow


def ff(home: Path, *args: str, host: str = "127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "FF_HOST": host}
    return subprocess.run([sys.executable, "-c", "from ffcli import main; main()", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def test_run_with_an_image(qwen2vl_ggufs: tuple[Path, Path], smollm2_gguf: Path, tmp_path: Path) -> None:
    from PIL import Image

    home = tmp_path / "home"
    model, projector = qwen2vl_ggufs
    (tmp_path / "Modelfile").write_text(f"FROM {model}\nFROM {projector}\n")
    built = ff(home, "build", "-f", str(tmp_path / "Modelfile"), "-t", "vlm:1", "--no-verify")
    assert built.returncode == 0, built.stderr
    add_model(Store(home / "store"), "text:1", {"q4_1": smollm2_gguf})
    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(picture)
    args = ["run", "vlm:1", "What is this?", "--image", str(picture), "--temperature", "0"]
    args += ["--max-tokens", "6"]
    local = ff(home, *args, "--local")
    assert local.returncode == 0 and local.stdout.strip(), local.stderr
    with start_server(home, tmp_path) as server:
        served = ff(home, *args, host=server.url.removeprefix("http://"))
        assert served.returncode == 0, served.stderr
        assert served.stdout == local.stdout
        refused = ff(home, "run", "text:1", "hi", "--image", str(picture), host=server.url.removeprefix("http://"))
        assert refused.returncode != 0 and "text:1 does not take images" in refused.stderr
    refused = ff(home, "run", "text:1", "hi", "--image", str(picture), "--local")
    assert refused.returncode != 0 and "takes no images" in refused.stderr
    missing = ff(home, *args[:3], "--image", str(tmp_path / "none.png"), "--local")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
