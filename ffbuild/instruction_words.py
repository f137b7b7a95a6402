"""The words of single instructions: LABEL's and VERIFY's ``key=value`` pairs, REQUIRES' version, TASK's name.

Each check raises a :class:`~ffbuild.errors.Problem` at the word that caused it (``arg`` is its index); the
planner gathers them with every other problem of the Modelfile.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from ffbuild.errors import Problem, did_you_mean
from ffbuild.params import parse_float32
from registry.choices import TASKS

_SEMVER: Final = re.compile(
    r"v(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?)?)?"
)
_LABEL_KEY: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
VERIFY_KEYS: Final = ("min_agreement", "max_perplexity_ratio", "prompt", "min_cosine", "max_wer")


def requires_version(text: str) -> str:
    version = text if text.startswith("v") else "v" + text
    if not _SEMVER.fullmatch(version):
        raise Problem(f'REQUIRES "{text}" is not a version', hint="a semantic version, e.g. REQUIRES 0.6.0")
    return version[1:]


def task_word(word: str) -> str:
    task = word.lower()
    if task not in TASKS:
        raise Problem(f'unknown task "{word}"', expected=tuple(TASKS), hint=did_you_mean(task, TASKS))
    return task


def parse_labels(words: Sequence[str], labels: dict[str, str]) -> None:
    for i, word in enumerate(words):
        key, eq, value = word.partition("=")
        if not eq:
            raise Problem(f'LABEL takes key=value, not "{word}"', arg=i)
        if not _LABEL_KEY.fullmatch(key):
            raise Problem(f'invalid label key "{key}" (letters, digits, . _ / -)', arg=i)
        labels[key] = value


def parse_verify(words: Sequence[str], verify: dict[str, float | str]) -> None:
    for i, word in enumerate(words):
        key, eq, value = word.partition("=")
        key = key.lower()
        if not eq:
            raise Problem(f'VERIFY takes key=value, not "{word}"', expected=VERIFY_KEYS, arg=i)
        if key not in VERIFY_KEYS:
            raise Problem(
                f'unknown VERIFY key "{key}"',
                expected=VERIFY_KEYS,
                hint=did_you_mean(key, VERIFY_KEYS),
                arg=i,
            )
        if key in verify:
            raise Problem(f"VERIFY {key} is given twice", arg=i)
        if key == "prompt":
            if not value.strip():
                raise Problem("VERIFY prompt is empty", arg=i)
            verify[key] = value
            continue
        try:
            number = parse_float32(value)
        except Problem as exc:
            raise Problem(f"VERIFY {key}: {exc.message}", arg=i) from None
        if key in ("min_agreement", "min_cosine") and not 0 <= number <= 1:
            raise Problem(f"VERIFY {key}={value} is outside 0..1", arg=i)
        if key == "max_wer" and number < 0:
            raise Problem(f"VERIFY max_wer={value} is negative (0 means every word right)", arg=i)
        if key == "max_perplexity_ratio" and number < 1:
            raise Problem(f"VERIFY max_perplexity_ratio={value} is below 1 (1 means no loss)", arg=i)
        verify[key] = number
