"""Tensor models for the server tests, built with the real ``ff build`` into a test FF_HOME.

- :func:`iris_model`: a scikit-learn logistic regression trained on the iris data set that ships
  with scikit-learn, converted to ONNX by skl2onnx, built with ``FROM model.onnx``.
- :func:`dtypes_model`: an ONNX graph of Identity nodes, one per OIP datatype ONNX Runtime carries.
- :func:`build_minilm_all`: ``modelfiles/minilm-all`` (GGUF f16, ONNX fp32/int8, TVM fp32) from the
  MiniLM folder.

The FF_HOME's build cache is a link to one kept under ~/.cache/ferrousforge-tests: its entries are keyed
by their inputs and by the code of the stages, so a later session reuses them only when nothing changed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BUILD_CACHE = Path.home() / ".cache" / "ferrousforge-tests" / "tensor-build-cache"


def prepare_home(home: Path) -> Path:
    BUILD_CACHE.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "cache").exists():
        (home / "cache").symlink_to(BUILD_CACHE, target_is_directory=True)
    return home


def ff_build(
    home: Path, modelfile: Path, tag: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(modelfile), "-t", tag, *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, cwd=ROOT)
    if check:
        assert proc.returncode == 0, f"ff build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def iris_model(home: Path, folder: Path) -> tuple[object, np.ndarray]:
    """Train, convert and build ``iris:latest``; return the classifier and the iris features."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    (folder / "Modelfile").write_text("FROM model.onnx\nLABEL org.opencontainers.image.title=iris\n")
    ff_build(home, folder / "Modelfile", "iris:latest")
    return clf, x


DTYPES = {
    "BOOL": 9,
    "UINT8": 2,
    "UINT16": 4,
    "UINT32": 12,
    "UINT64": 13,
    "INT8": 3,
    "INT16": 5,
    "INT32": 6,
    "INT64": 7,
    "FP16": 10,
    "FP32": 1,
    "FP64": 11,
    "BYTES": 8,
}
"""OIP datatype → ONNX TensorProto element type (BF16 has no Identity kernel in ONNX Runtime's CPU)."""


def dtypes_model(home: Path, folder: Path) -> None:
    import onnx
    from onnx import helper

    ins = [helper.make_tensor_value_info(f"in_{d}", t, [None, 2]) for d, t in DTYPES.items()]
    outs = [helper.make_tensor_value_info(f"out_{d}", t, [None, 2]) for d, t in DTYPES.items()]
    nodes = [helper.make_node("Identity", [f"in_{d}"], [f"out_{d}"]) for d in DTYPES]
    graph = helper.make_graph(nodes, "dtypes", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "Modelfile").write_text("FROM model.onnx\nTASK tensor\n")
    ff_build(home, folder / "Modelfile", "dtypes:latest")


def build_minilm_all(home: Path, minilm_folder: Path) -> None:
    ff_build(
        home,
        ROOT / "modelfiles" / "minilm-all",
        "minilm-all:latest",
        "--build-arg",
        f"SOURCE={minilm_folder}",
    )
