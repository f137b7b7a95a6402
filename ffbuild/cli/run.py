"""``ff run name:tag "prompt"``: generate from a stored model, through ``ff serve`` when one answers.

When a server answers at ``$FF_HOST`` (default ``127.0.0.1:11435``; ``GET /api/version``) the request
goes there (``POST /api/generate``, NDJSON stream). Otherwise the chosen GGUF variant is loaded here
with llama-cpp-python and the model's chat template, and tokens stream to the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import types
import urllib.error
import urllib.request
from collections.abc import Iterator

import click

from ffbuild.choices import QUANTIZATIONS
from registry.artifact import ModelFiles, VariantRef, open_variant, variant_tag, variants_of
from registry.reference import Reference, ReferenceError, parse_reference
from registry.select import DEVICE_PREFERENCE, SelectionError, detect_host, select_variant
from registry.store import Store, StoreError

DEFAULT_HOST = "127.0.0.1:11435"


def server_url() -> str:
    host = os.environ.get("FF_HOST", DEFAULT_HOST).strip() or DEFAULT_HOST
    return host.rstrip("/") if "://" in host else f"http://{host}"


def server_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def choose_variant(
    variants: list[VariantRef], *, variant: str | None, quantize: str | None, target: str | None
) -> VariantRef:
    """The user's choice, or else the highest-precision variant that fits this machine."""
    if variant or quantize or target:
        return select_variant(variants, variant=variant, quantize=quantize, target=target)
    host = detect_host()
    fitting = [v for v in variants if host.fits(v)]
    if not fitting:
        return select_variant(variants)  # raises, listing the candidates
    return max(
        fitting,
        key=lambda v: (
            DEVICE_PREFERENCE.get(v.device, 0),
            QUANTIZATIONS[v.quantization]["bits"] if v.quantization in QUANTIZATIONS else 0.0,
        ),
    )


def _options(
    files: ModelFiles | None, temperature: float | None, seed: int | None, max_tokens: int
) -> dict[str, object]:
    opts: dict[str, object] = dict(files.params) if files is not None else {}
    if temperature is not None:
        opts["temperature"] = temperature
    if seed is not None:
        opts["seed"] = seed
    opts["num_predict"] = max_tokens
    return opts


def stream_server(url: str, model: str, prompt: str, options: dict[str, object]) -> Iterator[str]:
    body = json.dumps({"model": model, "prompt": prompt, "stream": True, "options": options}).encode()
    req = urllib.request.Request(
        f"{url}/api/generate", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        resp = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            detail = str(json.loads(detail).get("error", detail))
        raise click.ClickException(f"the server at {url} answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the server at {url}: {exc}") from None
    try:
        with resp:
            for line in resp:
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "error" in msg:
                    raise click.ClickException(f"the server at {url}: {msg['error']}")
                yield str(msg.get("response", ""))
                if msg.get("done"):
                    return
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"the stream from {url} broke off: {exc}") from None


def _plain_cpu_buffers(llama_cpp_mod: types.ModuleType) -> None:
    """Turn off llama.cpp's CPU "extra" (AMX/repack) buffers, unless FF_LLAMA_EXTRA_BUFFERS=1.

    With llama-cpp-python 0.3.36 on AMX CPUs they crash (SIGSEGV) on multi-token batch decodes of
    Q4_1/Q8_0 models (the same workaround as ffserve's llama.cpp runtime, docs/serving.md).
    """
    lib = llama_cpp_mod.llama_cpp
    original = getattr(lib, "_ff_original_model_params", None) or lib.llama_model_default_params
    lib._ff_original_model_params = original

    def params() -> object:
        p = original()
        if os.environ.get("FF_LLAMA_EXTRA_BUFFERS", "0") != "1":
            p.use_extra_bufts = False
        return p

    lib.llama_model_default_params = params


def stream_local(
    files: ModelFiles, prompt: str, options: dict[str, object], threads: int | None
) -> Iterator[str]:
    try:
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    except ImportError:
        raise click.ClickException(
            "running a GGUF model needs llama-cpp-python: pip install 'ferrousforge[gguf]'"
        ) from None
    _plain_cpu_buffers(llama_cpp)
    n_ctx = int(str(options.get("num_ctx", 2048)))
    try:
        llm = Llama(
            model_path=str(files.weights[0]),
            lora_path=str(files.adapters[0]) if files.adapters else None,
            n_ctx=n_ctx,
            n_threads=threads,
            seed=int(str(options.get("seed", 0))),
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"llama.cpp cannot load {files.digest}: {exc}") from None
    handler = None
    if files.template and "{%" in files.template:
        eos = llm.detokenize([llm.token_eos()]).decode("utf-8", "replace")
        bos = llm.detokenize([llm.token_bos()]).decode("utf-8", "replace")
        handler = Jinja2ChatFormatter(files.template, eos_token=eos, bos_token=bos).to_chat_handler()
        llm.chat_handler = handler
    elif files.template:
        click.echo("note: the stored TEMPLATE is not Jinja; `ff run` uses the GGUF's chat template", err=True)
    messages: list[dict[str, str]] = []
    if files.system:
        messages.append({"role": "system", "content": files.system})
    messages += [{"role": m["role"], "content": m["content"]} for m in files.messages]
    messages.append({"role": "user", "content": prompt})
    stop = options.get("stop")
    chunks = llm.create_chat_completion(
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        temperature=float(str(options.get("temperature", 0.8))),
        top_k=int(str(options.get("top_k", 40))),
        top_p=float(str(options.get("top_p", 0.95))),
        min_p=float(str(options.get("min_p", 0.05))),
        repeat_penalty=float(str(options.get("repeat_penalty", 1.0))),
        max_tokens=int(str(options.get("num_predict", 256))),
        stop=[str(s) for s in stop] if isinstance(stop, list) else None,
        seed=int(str(options["seed"])) if "seed" in options else None,
    )
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]  # type: ignore[index]
        text = delta.get("content") if isinstance(delta, dict) else None
        if text:
            yield str(text)


@click.command("run")
@click.argument("reference")
@click.argument("prompt")
@click.option("--variant", default=None, help="the variant name, e.g. q8_0-cpu")
@click.option("--quantize", default=None, help="choose the variant by quantization")
@click.option("--target", default=None, help="choose the variant by target")
@click.option("--temperature", type=float, default=None, help="0 for greedy decoding")
@click.option("--seed", type=int, default=None)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--local", "force_local", is_flag=True, help="run here even when a server answers at $FF_HOST")
def run_command(
    reference: str,
    prompt: str,
    variant: str | None,
    quantize: str | None,
    target: str | None,
    temperature: float | None,
    seed: int | None,
    max_tokens: int,
    threads: int | None,
    force_local: bool,
) -> None:
    """Generate a reply from a model in the store (streams tokens to the terminal)."""
    try:
        ref: Reference = parse_reference(reference)
    except ReferenceError as exc:
        raise click.ClickException(str(exc)) from None
    url = server_url()
    store = Store()
    chosen: VariantRef | None = None
    files: ModelFiles | None = None
    try:
        variants = variants_of(store, ref)
        chosen = choose_variant(variants, variant=variant, quantize=quantize, target=target)
        files = open_variant(store, chosen.descriptor.digest)
    except (StoreError, SelectionError) as exc:
        if force_local or not server_answers(url):
            raise click.ClickException(str(exc)) from None
    options = _options(files, temperature, seed, max_tokens)
    local_ok = chosen is not None and chosen.format == "gguf" and chosen.backend == "llamacpp"
    if not force_local and server_answers(url):
        model = str(ref)
        if chosen is not None and (variant or quantize or target) and ref.tag:
            model = str(ref.with_tag(variant_tag(ref.tag, chosen.name)))
        pieces = stream_server(url, model, prompt, options)
    elif files is None or chosen is None or not local_ok:
        what = f"{chosen.name} ({chosen.backend}, {chosen.format})" if chosen else str(ref)
        raise click.ClickException(
            f"`ff run` runs GGUF variants here with llama.cpp; {what} needs `ff serve` (start it, then retry)"
        )
    else:
        pieces = stream_local(files, prompt, options, threads)
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


COMMANDS = [run_command]
