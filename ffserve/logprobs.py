"""Token logprobs (``Token.logprobs``) in each API's shape: OpenAI chat, OpenAI completions, Ollama."""

from __future__ import annotations

from collections.abc import Iterable

from ffruntime.runtime import TokenLogprob, TopLogprob


def _entry(t: TokenLogprob | TopLogprob) -> dict[str, object]:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes or t.token.encode("utf-8"))}


def chat(tokens: Iterable[TokenLogprob]) -> dict[str, object]:
    """OpenAI chat ``choices[].logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    content = [{**_entry(t), "top_logprobs": [_entry(x) for x in t.top]} for t in tokens]
    return {"content": content, "refusal": None}


def completion(tokens: Iterable[TokenLogprob], offset: int = 0) -> dict[str, object]:
    """OpenAI (legacy) completions ``choices[].logprobs``: parallel lists and text offsets."""
    out: dict[str, list[object]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        out["tokens"].append(t.token)
        out["token_logprobs"].append(t.logprob)
        out["top_logprobs"].append({x.token: x.logprob for x in t.top})
        out["text_offset"].append(offset)
        offset += len(t.token)
    return dict(out)


def ollama(tokens: Iterable[TokenLogprob]) -> list[dict[str, object]]:
    """Ollama (0.12+) ``logprobs``: ``[{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]``."""
    return [{**_entry(t), "top_logprobs": [_entry(x) for x in t.top]} for t in tokens]
