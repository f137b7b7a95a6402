"""``ff run name:tag "prompt"``: a reply from a stored model, through ``ff serve`` when one answers;
``ff run name:tag --audio clip.wav``: a speech model's transcript (:mod:`ffcli.transcribe`).

When a server answers at ``$FF_HOST`` (default ``127.0.0.1:11435``; ``GET /api/version``) the request
goes there (``POST /api/chat``, or ``/api/generate`` for a model whose ``/api/show`` lacks the ``chat``
capability). Otherwise the variant is chosen with :func:`registry.select.select_stored` (as ``ff
serve`` chooses) and loaded here through :func:`ffruntime.load`, exactly as the server would: the
same prompt assembly (the Modelfile's Go TEMPLATE or the model's own chat template), sampling
defaults and PARAMETERs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import click

from ffcli import transcribe
from registry.artifact import ModelFiles, VariantRef, open_variant, variant_tag
from registry.reference import Reference, ReferenceError, parse_reference
from registry.select import SelectionError, select_stored
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


def _options(temperature: float | None, seed: int | None, max_tokens: int | None) -> dict[str, object]:
    opts: dict[str, object] = {}
    if temperature is not None:
        opts["temperature"] = temperature
    if seed is not None:
        opts["seed"] = seed
    if max_tokens is not None:
        opts["num_predict"] = max_tokens
    return opts


class _Refused(Exception):
    """The server answered with an HTTP error: its status and the ``error`` text."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


def _post(url: str, path: str, body: dict[str, object]) -> http.client.HTTPResponse:
    req = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        resp: http.client.HTTPResponse = urllib.request.urlopen(req, timeout=600)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            detail = str(json.loads(detail).get("error", detail))
        raise _Refused(exc.code, detail) from None
    return resp


def _chats(url: str, model: str) -> bool:
    """Whether the server's ``model`` has the ``chat`` capability (``/api/show``, as ``ollama run`` asks)."""
    with _post(url, "/api/show", {"model": model}) as resp:
        try:
            shown = json.load(resp)
        except json.JSONDecodeError as exc:
            raise click.ClickException(f"{url}/api/show answered something not JSON: {exc}") from None
    return isinstance(shown, dict) and "chat" in (shown.get("capabilities") or [])


def stream_server(
    url: str, model: str, prompt: str, options: dict[str, object], images: Sequence[bytes] = ()
) -> Iterator[str]:
    """The server's chat answer (its generate answer for a model without chat), streamed; ``images``
    go with the prompt as Ollama's base64 ``images``."""
    common = {"model": model, "stream": True, "options": options}
    pics = {"images": [base64.b64encode(b).decode() for b in images]} if images else {}
    try:
        if _chats(url, model):
            message = {"role": "user", "content": prompt, **pics}
            resp = _post(url, "/api/chat", {**common, "messages": [message]})
        else:
            resp = _post(url, "/api/generate", {**common, "prompt": prompt, **pics})
    except _Refused as exc:
        raise click.ClickException(f"the server at {url} answered {exc.status}: {exc.detail}") from None
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
                text = msg["message"].get("content", "") if "message" in msg else msg.get("response", "")
                yield str(text)
                if msg.get("done"):
                    return
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"the stream from {url} broke off: {exc}") from None


async def generate_local(
    variant: VariantRef,
    files: ModelFiles,
    prompt: str,
    options: dict[str, object],
    threads: int | None,
    num_ctx: int | None = None,
    images: Sequence[bytes] = (),
) -> AsyncIterator[str]:
    """Load ``variant`` through ffruntime (as ``ff serve`` does) and stream its answer to ``prompt``
    (with ``images``, for a model with a projector)."""
    import ffruntime
    from ffruntime.errors import BackendUnavailable, RuntimeFailure
    from ffruntime.options import model_options
    from ffruntime.runtime import (
        Capability,
        ChatMessage,
        GenerationRequest,
        Media,
        RequestRejected,
        TextRuntime,
        Token,
    )
    from ffruntime.settings import LoadSettings

    try:  # the server's rule: --num-ctx / FF_NUM_CTX, else the model's PARAMETER, else the default
        settings = LoadSettings.for_model(files.params, num_ctx=num_ctx, threads=threads or 0)
        runtime = await ffruntime.load(variant, files, settings)
    except (BackendUnavailable, RuntimeFailure, OSError, ValueError) as exc:
        raise click.ClickException(f"cannot load {variant.name}: {exc}") from None
    try:
        if not isinstance(runtime, TextRuntime) or not (
            {Capability.CHAT, Capability.GENERATE} & runtime.capabilities
        ):
            raise click.ClickException(f"{variant.name} does not generate text")
        opts = model_options(files.params, options)  # type: ignore[arg-type]
        media = tuple(Media(b, "image") for b in images)
        if Capability.CHAT in runtime.capabilities:
            request = GenerationRequest(messages=[ChatMessage("user", prompt, media=media)], options=opts)
        else:
            request = GenerationRequest(prompt=prompt, options=opts, media=media)
        try:
            async for ev in runtime.generate(request):
                if isinstance(ev, Token):
                    yield ev.text
        except RequestRejected as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        await runtime.close()


async def _print(pieces: AsyncIterator[str]) -> None:
    async for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()


@click.command("run")
@click.argument("reference")
@click.argument("prompt", required=False)
@click.option(
    "--audio",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="transcribe this audio file with a speech model (PROMPT, if given, is Whisper's initial prompt)",
)
@click.option("--variant", default=None, help="the variant name, e.g. q8_0-cpu")
@click.option("--quantize", default=None, help="choose the variant by quantization")
@click.option("--target", default=None, help="choose the variant by target")
@click.option("--backend", default=None, help="choose the variant by backend")
@click.option("--temperature", type=float, default=None, help="0 for greedy decoding")
@click.option("--seed", type=int, default=None)
@click.option(
    "--max-tokens", type=click.IntRange(min=1), default=None, help="stop after this many tokens"
)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--num-ctx",
    type=click.IntRange(min=1),
    default=None,
    envvar="FF_NUM_CTX",
    help="the context to load the model with, as ff serve's (default: the model's PARAMETER num_ctx, else "
    "2048); a running server keeps its own",
)
@click.option("--local", "force_local", is_flag=True, help="run here even when a server answers at $FF_HOST")
@click.option("--image", "images", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="an image file to send with the prompt (repeatable; the model needs a projector)")
def run_command(
    reference: str,
    prompt: str | None,
    audio: Path | None,
    variant: str | None,
    quantize: str | None,
    target: str | None,
    backend: str | None,
    temperature: float | None,
    seed: int | None,
    max_tokens: int | None,
    threads: int | None,
    num_ctx: int | None,
    force_local: bool,
    images: tuple[Path, ...],
) -> None:
    """Generate a reply from a model in the store (streams tokens to the terminal), or transcribe --audio."""
    if prompt is None and audio is None:
        raise click.UsageError("give a PROMPT, or --audio FILE for a speech model")
    pictures = [_read_image(p) for p in images]
    try:
        ref: Reference = parse_reference(reference)
    except ReferenceError as exc:
        raise click.ClickException(str(exc)) from None
    url = server_url()
    options = _options(temperature, seed, max_tokens)
    use_server = not force_local and server_answers(url)
    chosen: VariantRef | None = None
    files: ModelFiles | None = None
    try:
        store = Store()
        chosen = select_stored(store, ref, variant=variant, quantize=quantize, target=target, backend=backend)
        files = open_variant(store, chosen.descriptor.digest)
    except (StoreError, SelectionError) as exc:
        if not use_server:
            raise click.ClickException(str(exc)) from None
    if use_server:
        model = str(ref)
        if chosen is not None and (variant or quantize or target or backend) and ref.tag:
            model = str(ref.with_tag(variant_tag(ref.tag, chosen.name)))
        if audio is not None:
            transcribe.write(transcribe.transcribe_server(url, model, audio, prompt, temperature) + "\n")
            return
        assert prompt is not None
        for piece in stream_server(url, model, prompt, options, pictures):
            sys.stdout.write(piece)
            sys.stdout.flush()
    else:
        assert chosen is not None and files is not None
        click.echo(f"{ref}: variant {chosen.name}", err=True)
        if audio is not None:
            pieces = transcribe.transcribe_local(chosen, files, audio, prompt, temperature, threads)
            asyncio.run(_print(pieces))
        else:
            assert prompt is not None
            asyncio.run(_print(generate_local(chosen, files, prompt, options, threads, num_ctx, pictures)))
    sys.stdout.write("\n")


MAX_IMAGE_FILE = 64 << 20  # read no further: the server or runtime refuses far less (ffruntime.images)


def _read_image(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_IMAGE_FILE + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc}") from None
    if len(data) > MAX_IMAGE_FILE:
        raise click.ClickException(f"{path} is over {MAX_IMAGE_FILE} bytes")
    return data


COMMANDS = [run_command]
