"""Verify a speech variant: word error rate on clips the build speaks with espeak-ng.

:data:`PHRASES` (a few words to a quarter of a minute) are spoken by Debian's ``espeak-ng`` into WAV
clips (one build-cache entry, keyed by the phrases and espeak-ng's version). Every variant is loaded
through ``ffruntime`` as the server loads it and transcribes each clip greedily (temperature 0); its
report holds the transcripts and two word error rates (word edits / reference words, over all clips):

- ``wer``: against the phrases' own text;
- ``wer_reference``: against the transcripts of the build's highest-precision variant (0 for itself).

:func:`run` is the build's ``verify-speech`` stage; ``VERIFY max_wer=…`` (default
:data:`DEFAULT_MAX_WER`) fails the build when a variant's ``wer`` is above it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from ffbuild.cache import CacheValue, file_digest
from ffbuild.stages import tools
from ffbuild.stages.context import BuildContext, BuildError, VariantOutput, VerifyPolicyError, as_number
from ffruntime.settings import LoadSettings

PHRASES: Final = (
    "Hello world.",
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Please send the report to the finance team before the meeting on Friday morning.",
    "Speech recognition turns spoken words into written text. Modern systems learn from many hours of "
    "recordings, and they follow different voices and speaking speeds. Small models run quickly on "
    "ordinary computers.",
)
DEFAULT_MAX_WER: Final = 0.5
"""Above this share of wrong words a variant is broken, whatever its size (tiny.en int8 measured 0.11)."""
ESPEAK: Final = "espeak-ng"
VERIFY_PACKAGES: Final = ("faster-whisper", "ctranslate2", "av")
_WORD: Final = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: what a word error rate compares."""
    return _WORD.findall(text.lower().replace("-", " "))


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Word substitutions + deletions + insertions turning ``ref`` into ``hyp`` (Levenshtein)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Edits over reference words, summed over the pairs."""
    edits = sum(edit_distance(words(r), words(h)) for r, h in zip(refs, hyps, strict=True))
    total = sum(len(words(r)) for r in refs)
    return edits / total if total else float(edits > 0)


def espeak_version() -> str:
    if shutil.which(ESPEAK) is None:
        raise BuildError(
            "verifying a speech model speaks its test clips with espeak-ng, which is not installed: "
            "apt-get install espeak-ng (or build with --no-verify)"
        )
    proc = subprocess.run([ESPEAK, "--version"], capture_output=True, text=True, check=False, timeout=30)
    return proc.stdout.strip()


def speak(folder: Path) -> None:
    """Write clip ``<i>.wav`` for each phrase into ``folder``."""
    for i, phrase in enumerate(PHRASES):
        out = folder / f"{i}.wav"
        proc = subprocess.run(
            [ESPEAK, "-w", str(out), phrase], capture_output=True, text=True, check=False, timeout=120
        )
        if proc.returncode != 0 or not out.is_file():
            raise BuildError(f"espeak-ng could not speak the verify clips: {proc.stderr.strip()}")


def transcribe_clips(
    backend: str, files: Mapping[str, Path], clips: Sequence[Path], threads: int | None, device: str
) -> list[str]:
    """Each clip's transcript by the variant made of ``files``, loaded as the server loads it."""
    from ffruntime.local import load_files
    from ffruntime.runtime import TranscribeRuntime, TranscriptionRequest, transcript

    async def run() -> list[str]:
        rt = await load_files(backend, dict(files), LoadSettings(threads=threads or 0, device=device))
        try:
            assert isinstance(rt, TranscribeRuntime)
            out = []
            for clip in clips:
                request = TranscriptionRequest(audio=clip.read_bytes(), temperature=0.0)
                _, segments = await rt.transcribe(request)
                out.append(transcript([s.text async for s in segments]))
            return out
        finally:
            await rt.close()

    return asyncio.run(run())


def _clips(ctx: BuildContext) -> list[Path]:
    key = ctx.cache_key("speech_clips", phrases=list(PHRASES), espeak=espeak_version())

    def produce(folder: Path) -> dict[str, CacheValue]:
        speak(folder)
        return {"clips": len(PHRASES)}

    entry, _ = ctx.cache.run("speech_clips", key, produce)
    clips = [entry.path / f"{i}.wav" for i in range(len(PHRASES))]
    if not all(c.is_file() for c in clips):
        raise BuildError(f"the verify clips in {entry.path} are missing; delete it and build again")
    return clips


def _transcripts(ctx: BuildContext, out: VariantOutput, clips: list[Path]) -> list[str]:
    files = {out.built.weight_name: out.built.weight.path} | {
        x.filepath: x.file.path for x in out.built.extra
    }
    key = ctx.cache_key(
        "verify_speech",
        files={k: file_digest(p) for k, p in sorted(files.items())},
        clips=[file_digest(c) for c in clips],
        versions={p: tools.package_version(p) for p in VERIFY_PACKAGES},
    )

    def produce(_: Path) -> dict[str, CacheValue]:
        start = time.perf_counter()
        from ffruntime.errors import BackendUnavailable, RuntimeFailure
        from ffruntime.runtime import RequestRejected

        try:
            texts = transcribe_clips(
                out.variant.backend, files, clips, ctx.options.threads, out.variant.target
            )
        except (BackendUnavailable, RuntimeFailure, RequestRejected) as exc:
            raise BuildError(f"variant {out.variant.name} does not load or run: {exc}") from None
        return {"transcripts": list(texts), "seconds": time.perf_counter() - start}

    ctx.progress.step("verify-speech", out.variant.name)
    entry, hit = ctx.cache.run("verify_speech", key, produce)
    texts = entry.meta.get("transcripts")
    if not isinstance(texts, list) or len(texts) != len(clips) or not all(isinstance(t, str) for t in texts):
        raise BuildError(f"the verify cache entry {entry.path} is damaged; delete it and build again")
    out.verify_seconds = as_number(entry.meta.get("seconds")) if not hit else 0.0
    out.verified_now = not hit
    return [str(t) for t in texts]


def run(ctx: BuildContext) -> str:
    """The verify-speech stage: WER of each speech variant; one above ``max_wer`` fails the build."""
    if not ctx.options.verify:
        return "skipped (--no-verify)"
    clips = _clips(ctx)
    outputs = [o for o in ctx.outputs if o.variant.family == "speech"]
    transcripts = {o.variant.name: _transcripts(ctx, o, clips) for o in outputs}
    reference = max(outputs, key=lambda o: o.built.bits)
    limit = ctx.plan.verify.max_wer if ctx.plan.verify.max_wer is not None else DEFAULT_MAX_WER
    failures, shown = [], []
    runtime = f"faster-whisper {tools.package_version('faster-whisper') or 'unknown'}"
    for o in outputs:
        texts = transcripts[o.variant.name]
        wer = word_error_rate(PHRASES, texts)
        o.report = {
            "loads": True,
            "wer": round(wer, 4),
            "wer_reference": round(word_error_rate(transcripts[reference.variant.name], texts), 4),
            "reference": reference.variant.name,
            "clips": len(clips),
            "phrases": list(PHRASES),
            "transcripts": list(texts),
        }
        o.runtime = runtime
        if wer > limit:
            failures.append(f"{o.variant.name}: word error rate {wer:.3f} is above max_wer {limit}")
        shown.append(f"{o.variant.name} {wer:.3f}")
    if failures:
        raise VerifyPolicyError("verify failed, nothing was stored:\n  " + "\n  ".join(failures))
    return "word error rate: " + ", ".join(shown)
