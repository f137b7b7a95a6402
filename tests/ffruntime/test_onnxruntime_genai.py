"""The ONNX Runtime GenAI runtime on the int4 SmolLM2 variant that `ff build` makes (real model)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ffruntime
from ffruntime.onnxruntime_genai import LOOKAHEAD, GenAIRuntime
from ffruntime.runtime import (
    ChatMessage,
    Done,
    ForcedToolCall,
    GenerationRequest,
    JsonSchema,
    RequestRejected,
    Token,
)
from ffruntime.settings import LoadSettings
from registry.artifact import VariantRef, open_variant, variants_of
from registry.store import Store
from tests.genai_home import REPO, TAG, build_multi

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, smollm2_hf: Path) -> Path:
    home = tmp_path_factory.mktemp("genai-rt")
    build_multi(home, smollm2_hf)
    return home


def int4(home: Path) -> tuple[Store, VariantRef]:
    store = Store(home / "store")
    return store, next(v for v in variants_of(store, TAG) if v.backend == "onnxruntime")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def rt(home: Path, loop: asyncio.AbstractEventLoop) -> Iterator[GenAIRuntime]:
    store, v = int4(home)
    runtime = loop.run_until_complete(
        ffruntime.load(v, open_variant(store, v.descriptor.digest), LoadSettings(threads=1, num_parallel=2))
    )
    assert isinstance(runtime, GenAIRuntime)
    yield runtime
    loop.run_until_complete(runtime.close())


def run(
    loop: asyncio.AbstractEventLoop, rt: GenAIRuntime, req: GenerationRequest, cancel_after: int = 0
) -> tuple[list[str], Done]:
    async def go() -> tuple[list[str], Done]:
        pieces: list[str] = []
        async for ev in rt.generate(req):
            if isinstance(ev, Token):
                pieces.append(ev.text)
                if cancel_after and len(pieces) == cancel_after:
                    req.cancel.set()
            else:
                return pieces, ev
        raise AssertionError("no Done")

    return loop.run_until_complete(go())


def chat(question: str = QUESTION, **options: object) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage("user", question)], options=options)  # type: ignore[arg-type]


def test_chat_answers_paris_to_the_end(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    pieces, done = run(loop, rt, chat(temperature=0))
    text = "".join(pieces)
    assert "Paris" in text and done.reason == "stop"  # ended by the end-of-turn token, no default limit
    assert len(pieces) > 1 and done.completion_tokens >= 10
    assert done.prompt_tokens > 20 and done.prompt_eval_ns > 0 and done.eval_ns > 0
    assert len(done.context) == done.prompt_tokens + done.completion_tokens


def test_generate_with_a_go_template(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    # SmolLM2's own layout, system turn included: without it this small model may ramble past its turn
    template = (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"
    )
    req = GenerationRequest(prompt=QUESTION, template=template, options={"temperature": 0})
    pieces, done = run(loop, rt, req)
    assert "Paris" in "".join(pieces) and done.reason == "stop"


def test_num_predict_and_stop_strings(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    pieces, done = run(loop, rt, chat(temperature=0, num_predict=5))
    assert done.reason == "length" and done.completion_tokens == 5
    pieces, done = run(loop, rt, chat(temperature=0, stop=["Paris"]))
    text = "".join(pieces)
    assert done.reason == "stop" and "Paris" not in text and text.startswith("The capital of France")


def test_seed_reproduces_sampling(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    runs = [
        "".join(run(loop, rt, chat("Tell me a story.", temperature=1.0, seed=s, num_predict=24))[0])
        for s in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_cancellation_between_steps(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    _, done = run(loop, rt, chat("Write a long story about the sea.", temperature=0), cancel_after=3)
    # the worker may be a few steps ahead of the consumer when the flag is set (a loaded machine)
    assert done.reason == "cancelled" and done.completion_tokens < 20


def test_worker_waits_for_a_slow_reader(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    req = chat("Write a long story about the sea.", temperature=0)

    async def go() -> Done:
        read = 0
        async for ev in rt.generate(req):
            if isinstance(ev, Done):
                return ev
            read += 1
            if read == 2:
                await asyncio.sleep(1.0)  # time for ~100 more tokens if the worker ran on unchecked
                req.cancel.set()
        raise AssertionError("no Done")

    done = loop.run_until_complete(go())
    assert done.reason == "cancelled" and done.completion_tokens <= 2 + LOOKAHEAD + 3


def test_concurrent_requests(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    async def both() -> list[str]:
        async def one() -> str:
            events = [ev async for ev in rt.generate(chat(temperature=0))]
            return "".join(ev.text for ev in events if isinstance(ev, Token))

        return list(await asyncio.gather(one(), one()))

    answers = loop.run_until_complete(both())
    assert answers[0] == answers[1] and "Paris" in answers[0]


def test_json_schema_format(loop: asyncio.AbstractEventLoop, rt: GenAIRuntime) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    req = chat("What is the capital of France? Answer in JSON.", temperature=0)
    req.constraint = JsonSchema(schema)
    pieces, _ = run(loop, rt, req)
    value = json.loads("".join(pieces))
    assert set(value) == {"city"} and "Paris" in value["city"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"constraint": ForcedToolCall(({"type": "function", "function": {"name": "f"}},))}, "tool call"),
        ({"logprobs": True}, "logprobs"),
        ({"options": {"min_p": 0.3}}, "min_p"),
        ({"options": {"temperature": "hot"}}, "temperature must be a number"),
        ({"context": [10**9]}, "outside the vocabulary"),
        ({"suffix": "end"}, "suffix"),
    ],
)
def test_refusals_are_request_rejected(rt: GenAIRuntime, change: dict[str, object], message: str) -> None:
    req = chat()
    for k, v in change.items():
        setattr(req, k, v)
    with pytest.raises(RequestRejected, match=message):
        rt.generate(req)


def test_serving_an_onnx_llm_imports_neither_torch_nor_transformers(home: Path) -> None:
    script = f"""
import asyncio, sys
from pathlib import Path
import ffruntime, ffserve.app
from ffruntime.runtime import ChatMessage, GenerationRequest, Token
from ffruntime.settings import LoadSettings
from registry.artifact import open_variant, variants_of
from registry.store import Store
store = Store(Path({str(home / "store")!r}))
v = next(v for v in variants_of(store, {TAG!r}) if v.backend == "onnxruntime")
async def main():
    rt = await ffruntime.load(v, open_variant(store, v.descriptor.digest), LoadSettings(threads=1))
    req = GenerationRequest(messages=[ChatMessage("user", {QUESTION!r})], options={{"temperature": 0}})
    text = "".join([e.text async for e in rt.generate(req) if isinstance(e, Token)])
    await rt.close()
    return text
print(asyncio.run(main()))
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(Path.home())},
    )
    assert proc.returncode == 0, proc.stderr
    answer, modules = proc.stdout.strip().splitlines()[-2:]
    assert "Paris" in answer
    assert modules == "[]"
