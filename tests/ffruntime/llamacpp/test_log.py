"""llama.cpp's log, collected per thread: threads that load models side by side (the verify stage's
workers, the server's engine and helpers) each get their own lines, and none crashes another."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ffruntime.errors import RuntimeFailure
from ffruntime.llamacpp.library import load_model, model_params
from ffruntime.settings import LoadSettings


def test_each_thread_collects_its_own_llama_cpp_log(tmp_path: Path) -> None:
    names = ("alpha", "beta", "gamma", "delta")
    reasons: dict[str, list[str]] = {n: [] for n in names}
    errors: list[BaseException] = []

    def load(name: str) -> None:
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF" + name.encode() * 64)  # no model: llama.cpp logs why, naming the file
        try:
            for _ in range(300):
                with pytest.raises(RuntimeFailure) as failure:
                    load_model(path, model_params(LoadSettings(threads=1)))
                reasons[name].append(str(failure.value).split(": ", 1)[1])  # llama.cpp's log lines
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=load, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for name, texts in reasons.items():
        assert len(texts) == 300
        for text in texts:
            assert f"{name}.gguf" in text, (name, text)
            assert not any(f"{o}.gguf" in text for o in names if o != name), (name, text)
