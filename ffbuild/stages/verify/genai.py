"""Verify an ONNX Runtime GenAI variant with the figures a GGUF variant gets (ffbuild.stages.verify.gguf).

The variant is loaded through :mod:`ffruntime.genai_model` with the server's settings; its logits at
every position of the fixed text (one generator step per token) give the perplexity, and against the
reference GGUF (the highest-precision conversion of the same source, run by llama.cpp) the greedy
next-token ``agreement`` and ``perplexity_ratio``; ``sample`` is the greedy answer to the prompt, rendered
by :mod:`ffruntime.prompting` as the server renders it (the Modelfile's TEMPLATE, else the model's own
chat template). A variant that does not load gives ``loads=False`` and the reason.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ffbuild.stages.errors import StageError, VerifyError
from ffbuild.stages.verify.gguf import (
    DEFAULT_PROMPT,
    DEFAULT_TEXT,
    SAMPLE_TOKENS,
    VerifyReport,
    reference_text,
    text_eval,
    verify_threads,
)
from ffruntime.errors import BackendUnavailable, RuntimeFailure
from ffruntime.prompting import ModelfilePrompt, question_prompt
from ffruntime.settings import LoadSettings


def verify_genai(
    folder: Path,
    *,
    reference: Path | None,
    text: str = DEFAULT_TEXT,
    prompt: str | None = None,
    threads: int | None = None,
    device: str = "cpu",
    template: str | None = None,
) -> VerifyReport:
    """Measure the GenAI export in ``folder`` (see the module doc); never raises for a bad model."""
    start = time.perf_counter()
    threads = threads if threads is not None else verify_threads()
    prompt = prompt or DEFAULT_PROMPT
    report = VerifyReport(
        path=str(folder), loads=False, task="generate", reference=str(reference) if reference else None
    )
    try:
        ref = reference_text(reference, text, threads) if reference is not None else None
        from ffruntime.genai_model import open_model

        m = open_model(folder, LoadSettings(threads=threads, device=device))
        report.loads = True
        tokens = m.encode(text)
        if len(tokens) < 2:
            raise VerifyError("the verification text is too short to measure anything")
        logits = m.logits(tokens)
        if not np.isfinite(logits).all():
            raise VerifyError(f"{folder} produced non-finite logits")
        own = text_eval(tokens, logits)
        report.perplexity = round(own.perplexity, 4)
        report.tokens_evaluated = len(tokens)
        if ref is not None:
            if ref.tokens != own.tokens:
                raise VerifyError(
                    f"{folder} tokenizes the verification text unlike its reference {reference}"
                )
            same = sum(a == b for a, b in zip(own.argmax[:-1], ref.argmax[:-1], strict=True))
            report.agreement = round(same / (len(tokens) - 1), 4)
            report.agreement_kind = "next-token"
            report.reference_perplexity = round(ref.perplexity, 4)
            report.perplexity_ratio = round(own.perplexity / ref.perplexity, 4)
        report.prompt = prompt
        prompting = m.prompting(ModelfilePrompt(template=template))
        report.used_chat_template = prompting.chats
        chat, _ = question_prompt(prompting, prompt)  # as the server renders it (a ValueError if it cannot)
        report.sample = m.decode(m.greedy(m.encode(chat), SAMPLE_TOKENS)).strip()
    except (StageError, RuntimeFailure, BackendUnavailable, ValueError) as e:
        report.error = str(e)
    report.seconds = round(time.perf_counter() - start, 3)
    return report
