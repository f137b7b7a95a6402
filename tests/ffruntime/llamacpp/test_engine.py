"""The llama.cpp batching engine on the real SmolLM2 (Q4_1): sequences in one batch behave as alone."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ffruntime
from ffruntime.llamacpp.runtime import LlamaCppRuntime
from ffruntime.runtime import (
    CancelFlag,
    Capability,
    ChatMessage,
    Done,
    GenerationRequest,
    JsonObject,
    JsonSchema,
    PromptTooLong,
    RequestRejected,
    Token,
    UnsupportedSchema,
)
from ffruntime.settings import LoadSettings
from registry.artifact import ModelFiles, VariantRef, open_variant, variants_of
from registry.store import Store
from tests.models import add_model

PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke.",
    "Count to five.",
    "What is 2+2?",
    "Name a colour.",
    "Write a haiku about the sea.",
    "What do cats eat?",
    "Say hello in Spanish.",
    "Why is the sky blue?",
]
UNCONVERTIBLE = JsonSchema({"type": "array", "uniqueItems": True})  # a schema llguidance cannot enforce


def stored(tmp: Path, gguf: Path, name: str = "tiny") -> tuple[VariantRef, ModelFiles]:
    store = Store(tmp / "store")
    add_model(store, f"{name}:latest", {"q4_1": gguf})
    v = variants_of(store, f"{name}:latest")[0]
    return v, open_variant(store, v.descriptor.digest)


def open_runtime(tmp: Path, gguf: Path, **settings: Any) -> LlamaCppRuntime:
    v, files = stored(tmp, gguf)
    rt = asyncio.run(ffruntime.load(v, files, LoadSettings(**settings)))
    assert isinstance(rt, LlamaCppRuntime)
    return rt


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[LlamaCppRuntime]:
    runtime = open_runtime(tmp_path_factory.mktemp("engine"), smollm2_gguf, num_parallel=9, num_ctx=512)
    yield runtime
    asyncio.run(runtime.close())


def chat(text: str, **options: Any) -> GenerationRequest:
    return GenerationRequest(messages=[ChatMessage("user", text)], options={"temperature": 0, **options})


Result = tuple[list[Token], Done | None]


async def run(rt: LlamaCppRuntime, req: GenerationRequest, stop_after: int = 0) -> Result:
    tokens: list[Token] = []
    done = None
    gen = rt.generate(req)
    async for ev in gen:
        if isinstance(ev, Token):
            tokens.append(ev)
            if stop_after and len(tokens) >= stop_after:
                break  # the client went away
        else:
            done = ev
    await gen.aclose()  # type: ignore[attr-defined]
    return tokens, done


def text_of(result: tuple[list[Token], Done | None]) -> str:
    return "".join(t.text for t in result[0])


def alone(rt: LlamaCppRuntime, req: GenerationRequest) -> tuple[list[Token], Done | None]:
    return asyncio.run(run(rt, req))


def together(rt: LlamaCppRuntime, reqs: list[GenerationRequest]) -> list[tuple[list[Token], Done | None]]:
    async def main() -> list[tuple[list[Token], Done | None]]:
        return list(await asyncio.gather(*(run(rt, r) for r in reqs)))

    return asyncio.run(main())


def test_greedy_alone_equals_among_eight_others(rt: LlamaCppRuntime) -> None:
    """Batched greedy answers are the solo answers, except where llama.cpp's kernels, which round
    differently for other batch shapes, meet a near-tie: then the two likeliest tokens of the solo run
    were within 0.25 nats of each other (seen: 0.08 after 19 identical tokens; a wrong KV cache or
    position breaks the answer at once) and the answers may part from there."""

    def req(p: str) -> GenerationRequest:
        r = chat(p, num_predict=32)
        r.logprobs, r.top_logprobs = True, 2
        return r

    solo = [alone(rt, req(p)) for p in PROMPTS]
    both = together(rt, [req(p) for p in PROMPTS])
    assert rt.stats()["max_batch_sequences"] >= 5  # they really ran in shared batches
    identical = 0
    for (s_tokens, s_done), (_, b_done) in zip(solo, both, strict=True):
        assert s_done is not None and b_done is not None and b_done.completion_tokens > 0
        a, b = s_done.context[s_done.prompt_tokens :], b_done.context[b_done.prompt_tokens :]
        if a == b:
            identical += 1
            continue
        i = next(k for k in range(min(len(a), len(b))) if a[k] != b[k])
        top = [lp for t in s_tokens for lp in t.logprobs][i].top
        assert top[0].logprob - top[1].logprob < 0.25, (i, top)  # a near-tie, not a wrong computation
    assert identical >= len(PROMPTS) - 2


def test_cancel_and_errors_leave_the_others_alone(rt: LlamaCppRuntime) -> None:
    reqs = [chat(p, num_predict=24) for p in PROMPTS[:3]]
    solo = [text_of(alone(rt, r)) for r in [chat(p, num_predict=24) for p in PROMPTS[:3]]]

    async def main() -> tuple[list[Any], list[Any]]:
        good = [asyncio.ensure_future(run(rt, r)) for r in reqs]
        cut = asyncio.ensure_future(run(rt, chat(PROMPTS[3], num_predict=200), stop_after=3))
        bad = [
            asyncio.ensure_future(run(rt, GenerationRequest(prompt="x", constraint=UNCONVERTIBLE))),
            asyncio.ensure_future(run(rt, GenerationRequest(prompt="x", context=[10**9]))),
            asyncio.ensure_future(run(rt, chat("y" * 3000))),
        ]
        errors = await asyncio.gather(*bad, return_exceptions=True)
        return list(await asyncio.gather(*good, cut)), list(errors)

    results, errors = asyncio.run(main())
    assert [text_of(r) for r in results[:3]] == solo
    assert len(results[3][0]) == 3
    assert all(isinstance(e, RequestRejected) for e in errors), errors
    assert isinstance(errors[2], PromptTooLong)
    assert rt.stats()["running"] == 0


def test_a_schema_the_engine_cannot_enforce_is_rejected_naming_the_feature(rt: LlamaCppRuntime) -> None:
    with pytest.raises(UnsupportedSchema, match="uniqueItems") as err:
        rt.prepare(GenerationRequest(prompt="x", constraint=UNCONVERTIBLE), lambda _: None)
    assert err.value.feature == "uniqueItems"


def test_stop_strings_end_the_text_before_them(rt: LlamaCppRuntime) -> None:
    full = text_of(alone(rt, chat(PROMPTS[1], num_predict=40)))
    words = full.split()
    assert len(words) > 4
    stop = " " + words[3]
    tokens, done = alone(rt, chat(PROMPTS[1], num_predict=40, stop=[stop, "never-there"]))
    assert done is not None and done.reason == "stop"
    assert "".join(t.text for t in tokens) == full[: full.index(stop)]


def test_text_is_whole_characters(rt: LlamaCppRuntime) -> None:
    req = GenerationRequest(prompt="Écris en français : « Où est la bibliothèque ? » Réponse :", raw=True,
                            options={"temperature": 0, "num_predict": 40})
    tokens, done = alone(rt, req)
    text = "".join(t.text for t in tokens)
    assert done is not None and "\ufffd" not in text
    assert any(ord(c) > 127 for c in text), text  # multi-byte characters came out whole
    assert rt.llama.vocab.tokenize(text, add_special=False) != []


def test_seed_reproduces_sampling_alone_or_batched(rt: LlamaCppRuntime) -> None:
    def sampled(seed: int) -> GenerationRequest:
        return chat(PROMPTS[5], temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed, num_predict=24)

    a = text_of(alone(rt, sampled(42)))
    b, c, _ = (text_of(r) for r in together(rt, [sampled(42), sampled(7), chat(PROMPTS[0], num_predict=24)]))
    assert a == b
    assert a != c


def test_json_format_and_schema_give_valid_json(rt: LlamaCppRuntime) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    ask = [ChatMessage("user", "Capital of France as JSON")]
    greedy = {"temperature": 0, "num_predict": 60}
    r1 = GenerationRequest(messages=ask, constraint=JsonObject(), options=greedy)
    r2 = GenerationRequest(messages=ask, constraint=JsonSchema(schema), options=greedy)
    out1, out2 = together(rt, [r1, r2])
    assert isinstance(json.loads(text_of(out1)), dict)
    assert isinstance(json.loads(text_of(out2))["city"], str)
    assert out1[1] is not None and out1[1].reason == "stop"  # the grammar ended it, not the limit


def test_a_constrained_string_never_holds_a_raw_newline(rt: LlamaCppRuntime) -> None:
    """The bug llama-cpp-python's old converter had: its string rule admitted raw control characters,
    so a strict answer could run on (``"France }\n\n…``) to the length limit, never closed."""
    city = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"], "additionalProperties": False}
    ask = [ChatMessage("user", "What is the capital of France? Answer in JSON with city and country.")]
    reqs = [GenerationRequest(messages=ask, constraint=JsonSchema(city),
                              options={"temperature": t, "seed": seed, "num_predict": 120})
            for t, seed in [(0, 0), (1.0, 1), (1.0, 2), (1.0, 3)]]
    for tokens, done in together(rt, reqs):
        assert done is not None and done.reason == "stop"
        value = json.loads("".join(t.text for t in tokens))
        assert set(value) == {"city", "country"}
        assert not any(ch < " " for v in value.values() for ch in v)


def test_constrained_and_free_sequences_batch_together(rt: LlamaCppRuntime) -> None:
    """A free sequence beside constrained ones stays free (the masks are per sequence): prose to its limit."""
    free = chat(PROMPTS[0], num_predict=24)
    ask = [ChatMessage("user", "List two colours as JSON.")]
    schema = {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 2, "maxItems": 2}
    options = [{"temperature": 1.0, "seed": s, "num_predict": 60} for s in (1, 2, 3)]
    guided = [GenerationRequest(messages=ask, constraint=JsonSchema(schema), options=o) for o in options]
    out = together(rt, [free, *guided])
    done = out[0][1]
    assert done is not None and done.reason == "length" and done.completion_tokens == 24
    assert not text_of(out[0]).lstrip().startswith(("{", "["))
    for result in out[1:]:
        value = json.loads(text_of(result))
        assert isinstance(value, list) and len(value) == 2


def test_logprobs_are_log_probabilities_sorted(rt: LlamaCppRuntime) -> None:
    req = chat(PROMPTS[0], num_predict=12)
    req.logprobs, req.top_logprobs = True, 3
    tokens, done = alone(rt, req)
    lps = [lp for t in tokens for lp in t.logprobs]
    assert (done is not None and len(lps) == done.completion_tokens) or (done and done.reason == "stop")
    assert lps and all(lp.logprob <= 0 for lp in lps)
    for lp in lps:
        assert len(lp.top) == 3
        assert [a.logprob for a in lp.top] == sorted((a.logprob for a in lp.top), reverse=True)
        assert lp.top[0].token == lp.token and abs(lp.top[0].logprob - lp.logprob) < 1e-9  # greedy
        assert bytes(lp.bytes).decode("utf-8", "replace") or lp.token == ""
    assert "".join(t.text for t in tokens) == b"".join(bytes(lp.bytes) for lp in lps).decode()
    assert all(not t.logprobs for t in alone(rt, chat(PROMPTS[0], num_predict=4))[0])


def test_no_limit_generates_until_the_end_of_generation(rt: LlamaCppRuntime) -> None:
    _, done = alone(rt, chat(PROMPTS[1]))
    assert done is not None and done.reason == "stop"
    assert done.completion_tokens > 16
    assert len(done.context) == done.prompt_tokens + done.completion_tokens


def test_prefix_reuse_is_counted_and_changes_nothing(rt: LlamaCppRuntime) -> None:
    system = "You are a helpful assistant who answers briefly. " * 12
    first = GenerationRequest(messages=[ChatMessage("system", system), ChatMessage("user", PROMPTS[6])],
                              options={"temperature": 0, "num_predict": 16})
    again = GenerationRequest(messages=[ChatMessage("system", system), ChatMessage("user", PROMPTS[6])],
                              options={"temperature": 0, "num_predict": 16})
    other = GenerationRequest(messages=[ChatMessage("system", system), ChatMessage("user", PROMPTS[2])],
                              options={"temperature": 0, "num_predict": 16})
    a = alone(rt, first)
    before = rt.stats()
    b = alone(rt, again)
    c = alone(rt, other)
    after = rt.stats()
    assert text_of(a) == text_of(b)
    assert after["prefix_hits"] - before["prefix_hits"] == 2
    assert after["prefix_tokens"] - before["prefix_tokens"] > 2 * 100  # the system prompt, twice
    assert c[1] is not None and c[1].completion_tokens > 0


def test_full_context_ends_with_length_never_a_crash(tmp_path: Path, smollm2_gguf: Path) -> None:
    small = open_runtime(tmp_path, smollm2_gguf, num_parallel=3, num_ctx=96)
    try:
        opts: dict[str, Any] = {"temperature": 1.0, "num_ctx": 80}
        starts = ["Once upon a time", "The history of Rome", "A list of numbers: 1, 2,"]
        reqs = [GenerationRequest(prompt=p, raw=True, options={**opts, "seed": i})
                for i, p in enumerate(starts)]
        reqs.append(GenerationRequest(prompt="The", raw=True, options={"temperature": 0}))
        results = together(small, reqs)
        for (_, done), limit in zip(results, [80, 80, 80, 96], strict=True):
            assert done is not None
            if done.reason == "length":
                assert done.prompt_tokens + done.completion_tokens == limit
        with pytest.raises(PromptTooLong):
            alone(small, GenerationRequest(prompt="word " * 200, raw=True))
    finally:
        asyncio.run(small.close())


def test_embeddings_in_one_batch_equal_one_by_one(rt: LlamaCppRuntime) -> None:
    texts = ["hello world", "The capital of France is Paris.", "cats and dogs"]
    cancel = CancelFlag()

    async def main() -> tuple[Any, list[Any]]:
        batch = await rt.embed(texts, truncate=True, cancel=cancel)
        singles = [await rt.embed([t], truncate=True, cancel=CancelFlag()) for t in texts]
        return batch, singles

    before = rt.stats()
    batch, singles = asyncio.run(main())
    after = rt.stats()
    assert after["embed_batches"] - before["embed_batches"] == 4  # 1 for the three, then 1 each
    for vec, one in zip(batch.vectors, singles, strict=True):
        assert np.allclose(vec, one.vectors[0], atol=1e-4)
        assert abs(np.linalg.norm(vec) - 1.0) < 1e-6
    assert batch.prompt_tokens == sum(s.prompt_tokens for s in singles)
    ids = rt.llama.vocab.tokenize(texts[1], add_special=True)
    by_ids = asyncio.run(rt.embed([ids], truncate=True, cancel=CancelFlag()))
    assert np.allclose(by_ids.vectors[0], batch.vectors[1], atol=1e-4)


def test_embedding_model_batches_requests_and_matches_verify(
    tmp_path: Path, minilm_folder: Path
) -> None:
    """An embedding-only GGUF (MiniLM, its own pooling): concurrent requests, vectors as LlamaEval's."""
    from ffbuild.stages.convert import convert_hf_to_gguf
    from ffruntime.llamacpp.eval import LlamaEval

    gguf = tmp_path / "minilm.gguf"
    convert_hf_to_gguf(minilm_folder, gguf, "f16")
    store = Store(tmp_path / "store")
    add_model(store, "mini:latest", {"f16": gguf}, task="embed")
    v = variants_of(store, "mini:latest")[0]
    emb = asyncio.run(ffruntime.load(v, open_variant(store, v.descriptor.digest), LoadSettings()))
    texts = ["A man is eating food.", "A cat sleeps.", "Der Himmel ist blau.", "hello"]
    try:
        assert emb.parallel > 1 and emb.capabilities == {Capability.EMBED}

        async def main() -> list[Any]:
            return list(await asyncio.gather(*(emb.embed([t], truncate=True, cancel=CancelFlag())
                                               for t in texts)))

        results = asyncio.run(main())
    finally:
        asyncio.run(emb.close())
    with LlamaEval(gguf, embedding=True) as m:
        for t, r in zip(texts, results, strict=True):
            assert np.allclose(r.vectors[0], m.embed(t), atol=1e-4)


def test_every_lora_adapter_serves_as_verify_measures(
    tmp_path: Path, smollm2_gguf: Path, smollm2_lora: Path, smollm2_lora_2: Path, smollm2_hf: Path
) -> None:
    """Every one of ``files.adapters`` (two ADAPTER lines) is applied to the served context, exactly as
    the verify stage applies them; with only the first the answer differs."""
    import dataclasses

    from ffbuild.stages.lora import convert_peft_lora
    from ffruntime.llamacpp.eval import LlamaEval

    adapters = [tmp_path / "a.gguf", tmp_path / "b.gguf"]
    for folder, out in zip((smollm2_lora, smollm2_lora_2), adapters, strict=True):
        convert_peft_lora(folder, out, base=smollm2_hf)
    v, files = stored(tmp_path, smollm2_gguf)
    files = dataclasses.replace(files, adapters=adapters)
    rt = asyncio.run(ffruntime.load(v, files, LoadSettings(num_parallel=2, num_ctx=256)))
    prompt = "The capital of France is"
    try:
        assert isinstance(rt, LlamaCppRuntime) and len(rt.llama.loras) == 2
        opts: dict[str, Any] = {"temperature": 0, "num_predict": 16}
        got = alone(rt, GenerationRequest(prompt=prompt, raw=True, options=opts))
    finally:
        asyncio.run(rt.close())
    with LlamaEval(smollm2_gguf, lora=adapters) as m:
        want = m.generate(m.tokenize(prompt), 16)
        both = m.logits(m.tokenize(prompt))
    with LlamaEval(smollm2_gguf, lora=adapters[0]) as m:
        first = m.logits(m.tokenize(prompt))
    assert got[1] is not None and list(got[1].context[got[1].prompt_tokens :]) == want
    assert np.abs(both - first).max() > 0.05 * np.abs(first).max()  # the second adapter acts too


def test_every_sampling_option_builds_a_chain_and_acts(rt: LlamaCppRuntime) -> None:
    base = {"num_predict": 48, "temperature": 0}
    plain = text_of(alone(rt, chat(PROMPTS[5], **base)))
    penalised = [
        {"repeat_penalty": 1.8, "repeat_last_n": 32},
        {"presence_penalty": 1.5},
        {"frequency_penalty": 1.5},
    ]
    for opts in penalised:
        assert text_of(alone(rt, chat(PROMPTS[5], **{**base, **opts}))) != plain, opts
    sampled = [
        {"temperature": 0.7, "top_k": 20, "top_p": 0.8, "min_p": 0.1, "typical_p": 0.9, "seed": 1},
        {"temperature": 0.7, "mirostat": 1, "mirostat_tau": 4.0, "mirostat_eta": 0.2, "seed": 1},
        {"temperature": 0.7, "mirostat": 2, "seed": 1},
    ]
    outs = together(rt, [chat(PROMPTS[5], **{**base, **opts}) for opts in sampled])
    assert all(r[1] is not None and r[1].completion_tokens > 0 for r in outs)
    for bad in ({"temperature": "hot"}, {"top_k": 1.5}, {"mirostat": 3}, {"num_ctx": -1}):
        with pytest.raises(RequestRejected):
            alone(rt, chat(PROMPTS[5], **bad))
