"""Push and pull throughput of `ff push` / `ff pull` against `skopeo copy`, same artifact, same run.

The model: one variant whose weights are ``--layers`` layers of random bytes, ``--size-mb`` MB in all
(default 1100 MB in 4 layers), written with registry.artifact. Both tools talk to a Debian
docker-registry on 127.0.0.1 (plain HTTP), started fresh for each round, so neither finds blobs already
there (both would otherwise mount them from an earlier round's repository). Both verify digests.
Each timed step starts after ``sync``, so neither pays for the writeback of the step before.
Rounds interleave the tools (ff first in even rounds, skopeo first in odd ones). Prints MB/s and the
ratio skopeo time / ff time (> 1: ff is faster) for each direction.

``--sweep`` instead times ff alone with several ``--jobs`` values (and parallel ranges on pull), the
measurement behind ``TransferOptions``' defaults.

    python bench/transfer.py [--rounds 2] [--size-mb 1100] [--layers 4] [--sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

from registry.artifact import layer, tag_model, write_index, write_variant
from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
from registry.oci import ANN_BACKEND, ANN_FORMAT, ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, MODEL_WEIGHT
from registry.remote import pull, push
from registry.store import Store
from registry.transfer import TransferOptions


def _make_model(store: Store, work: Path, size_mb: int, n_layers: int) -> int:
    """Random weights in ``n_layers`` layers of unequal sizes (as shards and embeddings are)."""
    weights = [2 ** (n_layers - i) for i in range(n_layers)]
    sizes = [size_mb * 1_000_000 * w // sum(weights) for w in weights]
    layers = []
    for i, n in enumerate(sizes):
        path = work / f"shard-{i}"
        with open(path, "wb") as f:
            for _ in range(n // (1 << 20)):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(n % (1 << 20)))
        name = f"model-{i + 1:05d}-of-{n_layers:05d}.safetensors"
        layers.append(layer(store, MODEL_WEIGHT, name, file=path))
        path.unlink()
    config = ModelPackConfig(
        descriptor=ModelDescriptor(name="bench"),
        config=ModelConfig(architecture="llama", format="safetensors", quantization="f16"),
        modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
    )
    ann = {ANN_VARIANT: "f16-cpu", ANN_TARGET: "cpu", ANN_BACKEND: "llamacpp", ANN_FORMAT: "safetensors",
           ANN_QUANTIZATION: "f16"}
    tag_model(store, "bench:1", write_index(store, [write_variant(store, config, layers, ann)]))
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


def _timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, after the disk has caught up with earlier steps' writes (``sync``): the
    registry and the stores write ~1 GB a step, and writeback left over from one step would slow
    whichever tool runs next."""
    os.sync()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _skopeo(src: str, dst: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
                    src, dst], check=True)


def _round(i: int, work: Path, src: Store, times: dict[str, list[float]]) -> None:
    # A fresh registry each round: both tools remember where blobs live and would mount them.
    proc, host = _registry(work / f"registry-{i}")
    try:
        ff_ref, sk_ref = f"{host}/ff/r{i}:1", f"{host}/skopeo/r{i}:1"
        dst, sk_dir = Store(work / f"ff-pull-{i}"), work / f"sk-pull-{i}"
        steps: dict[str, Callable[[], object]] = {
            "ff push": lambda: push("bench:1", store=src, remote_ref=ff_ref),
            "skopeo push": lambda: _skopeo(f"oci:{src.root}:bench:1", f"docker://{sk_ref}"),
            "ff pull": lambda: pull(ff_ref, store=dst, all_variants=True),
            "skopeo pull": lambda: _skopeo(f"docker://{sk_ref}", f"oci:{sk_dir}:bench:1"),
        }
        order = ["ff", "skopeo"] if i % 2 == 0 else ["skopeo", "ff"]
        for direction in ("push", "pull"):
            for tool in order:
                key = f"{tool} {direction}"
                times[key].append(_timed(steps[key]))
                print(f"round {i}: {key} {times[key][-1]:.2f} s", flush=True)
        got = {p.name for p in dst.blobs.iterdir()}
        assert got == {p.name for p in src.blobs.iterdir()}, "ff pull lost blobs"
        sk = {p.name for p in (sk_dir / "blobs" / "sha256").iterdir()}
        # skopeo 1.9 re-serialises the index (drops artifactType), so only the index blob differs.
        assert len(got ^ sk) <= 2 and len(got) == len(sk), "skopeo and ff pulled different blobs"
    finally:
        proc.terminate()
        proc.wait(10)
        for d in (f"ff-pull-{i}", f"sk-pull-{i}", f"registry-{i}"):
            shutil.rmtree(work / d, ignore_errors=True)


def _sweep(work: Path, src: Store, mb: float, rounds: int) -> None:
    """ff alone: push and pull times for several jobs values, and ranges on pull."""
    pairs = [(1, 1), (2, 1), (4, 1), (2, 4), (4, 4)]
    settings = [TransferOptions(jobs=j, range_parts=r) for j, r in pairs]
    times: dict[str, list[float]] = {}
    for r in range(rounds):
        for n, opts in enumerate(settings if r % 2 == 0 else settings[::-1]):
            name = f"jobs={opts.jobs} ranges={opts.range_parts}"
            proc, host = _registry(work / f"sweep-{r}-{n}")
            try:
                ref, dst = f"{host}/ff/s:1", Store(work / f"sweep-pull-{r}-{n}")
                t_push = _timed(lambda: push("bench:1", store=src, remote_ref=ref, options=opts))  # noqa: B023
                t_pull = _timed(lambda: pull(ref, store=dst, all_variants=True, options=opts))  # noqa: B023
            finally:
                proc.terminate()
                proc.wait(10)
                shutil.rmtree(work / f"sweep-{r}-{n}", ignore_errors=True)
                shutil.rmtree(work / f"sweep-pull-{r}-{n}", ignore_errors=True)
            times.setdefault(f"{name} push", []).append(t_push)
            times.setdefault(f"{name} pull", []).append(t_pull)
            print(f"round {r}: {name}: push {t_push:.2f} s, pull {t_pull:.2f} s", flush=True)
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k}: {med:.2f} s ({mb / med:.0f} MB/s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size-mb", type=int, default=1100)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sweep", action="store_true", help="time ff alone with several --jobs values")
    args = ap.parse_args()
    for tool in ("/usr/bin/docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install docker-registry skopeo")
    work = Path(tempfile.mkdtemp(prefix="ff-bench-transfer-"))
    try:
        src = Store(work / "src")
        size = _make_model(src, work, args.size_mb, args.layers)
        mb = size / 1e6
        print(f"model: {mb:.0f} MB in {len(list(src.blobs.iterdir()))} blobs "
              f"({args.layers} weight layers); {TransferOptions.from_env()}", flush=True)
        if args.sweep:
            _sweep(work, src, mb, args.rounds)
            return
        times: dict[str, list[float]] = {"ff push": [], "skopeo push": [], "ff pull": [], "skopeo pull": []}
        for i in range(args.rounds):
            _round(i, work, src, times)
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "model_bytes": size,
            "rounds": args.rounds,
            **{f"{k} s": round(v, 3) for k, v in med.items()},
            **{f"{k} MB/s": round(mb / v, 1) for k, v in med.items()},
            "push ratio skopeo/ff": round(med["skopeo push"] / med["ff push"], 2),
            "pull ratio skopeo/ff": round(med["skopeo pull"] / med["ff pull"], 2),
        }
        print(f"{args.rounds} rounds, medians")
        for k in ("push", "pull"):
            f, s = med[f"ff {k}"], med[f"skopeo {k}"]
            print(f"{k}: ff {f:.2f} s ({mb / f:.0f} MB/s)  skopeo {s:.2f} s ({mb / s:.0f} MB/s)  "
                  f"ratio skopeo/ff {s / f:.2f}")
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
