"""``ff serve`` and ``ff ps``: settings from flags, then the server in ffserve (imported on use)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import click


def _settings_kwargs(**flags: object) -> dict[str, object]:
    return {k: v for k, v in flags.items() if v is not None and v != ()}


@click.command("serve")
@click.option("--host", default=None, help="address to listen on (FF_HOST, default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (FF_PORT, default 11435)")
@click.option(
    "--grpc-port", type=int, default=None,
    help="also serve the Open Inference Protocol over gRPC on this port (FF_GRPC_PORT; default off)",
)
@click.option(
    "--models", "models", multiple=True, help="models to load at start; ready when loaded (FF_MODELS)"
)
@click.option(
    "--models-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="also serve the model in this folder, e.g. KServe's /mnt/models (FF_MODELS_DIR)",
)
@click.option("--model-name", default=None, help="the name of the --models-dir model (FF_MODEL_NAME)")
@click.option("--target", default=None, help="prefer variants for this target, e.g. cpu, cuda (FF_TARGET)")
@click.option("--quantize", default=None, help="prefer variants with this quantization (FF_QUANTIZE)")
@click.option("--backend", default=None, help="serve only variants of this backend (FF_BACKEND)")
@click.option("--pull/--no-pull", default=None, help="pull unknown models from their registry (FF_PULL)")
@click.option(
    "--keep-alive", default=None, help="how long an idle model stays loaded, e.g. 5m, -1 (FF_KEEP_ALIVE)"
)
@click.option("--max-memory", default=None, help="memory budget for loaded models, e.g. 8GiB (FF_MAX_MEMORY)")
@click.option("--max-loaded-models", type=int, default=None, help="FF_MAX_LOADED_MODELS")
@click.option(
    "--max-queue", type=int, default=None, help="requests waiting per model before 503 (FF_MAX_QUEUE)"
)
@click.option(
    "--num-parallel", type=int, default=None, help="requests run at once per model (FF_NUM_PARALLEL)"
)
@click.option("--num-threads", type=int, default=None, help="llama.cpp threads per model (FF_NUM_THREADS)")
@click.option("--num-ctx", type=int, default=None, help="context length per slot (FF_NUM_CTX)")
@click.option("--config", "config", default=None, help="a TOML settings file (FF_CONFIG)")
def serve(config: str | None, models: tuple[str, ...], **flags: object) -> None:
    """Serve stored models over the Ollama and OpenAI APIs.

    Settings: flags > FF_* environment variables > the TOML file (--config / FF_CONFIG) > defaults.
    """
    if config:
        os.environ["FF_CONFIG"] = config
    from pydantic import ValidationError

    from ffserve.server import serve as run
    from ffserve.settings import Settings

    kwargs = _settings_kwargs(**flags)
    if models:
        kwargs["models"] = [m for item in models for m in item.split(",") if m]
    try:
        settings = Settings(**kwargs)  # type: ignore[arg-type]
    except (ValidationError, ValueError) as exc:
        raise click.ClickException(f"bad settings: {exc}") from None
    from ffcli.serve_build import build_for_server
    from registry.store import StoreError

    try:
        run(settings, builder=build_for_server)
    except StoreError as exc:  # a --models-dir folder that is not a model folder
        raise click.ClickException(str(exc)) from None


@click.command("ps")
@click.option("--host", default=None, help="server address (default: FF_HOST/FF_PORT or 127.0.0.1:11435)")
@click.option("--json", "as_json", is_flag=True, help="print the server's /api/ps answer as JSON")
def ps(host: str | None, as_json: bool) -> None:
    """List the models a running ff serve has loaded."""
    if host is None:
        host = f"{os.environ.get('FF_HOST', '127.0.0.1')}:{os.environ.get('FF_PORT', '11435')}"
    url = (host if host.startswith("http") else f"http://{host}") + "/api/ps"
    req = urllib.request.Request(url)
    key = (os.environ.get("FF_API_KEY") or os.environ.get("FF_API_KEYS", "")).split(",")[0].strip()
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach ff serve at {url}: {exc}") from None
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("NAME", "ID", "SIZE", "CONTEXT", "UNTIL")]
    for m in data.get("models", []):
        rows.append(
            (
                m["name"],
                m["digest"][:12],
                f"{m['size'] / 2**20:.0f} MiB",
                str(m.get("context_length", "")),
                m.get("expires_at", ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


COMMANDS = [serve, ps]
