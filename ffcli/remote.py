"""``ff push``, ``ff pull``, ``ff login``, ``ff logout``: models to and from OCI registries.

Progress: on a terminal, one bar per blob and a total, with bytes and rate (rich); nothing with
``--quiet`` or when standard error is not a terminal; with ``--json`` one JSON object per line (the
fields of ``registry.transfer.ProgressEvent``, at most about five lines a second per blob, plus
every start/finish) for CI logs, the last line being the result. ``--jobs`` (``FF_TRANSFER_JOBS``)
and, for push, ``--chunk-size`` (``FF_CHUNK_SIZE``) set ``registry.transfer.TransferOptions``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, TypeVar

import click

from ffcli.exitcodes import expected_errors

if TYPE_CHECKING:
    from registry.transfer import TransferOptions

F = TypeVar("F", bound=Callable[..., object])


def _transport_options(f: F) -> F:
    f = click.option(
        "--ca-file", type=click.Path(exists=True, dir_okay=False), envvar="FF_CA_BUNDLE",
        help="CA bundle for the registry's TLS certificate (default: $FF_CA_BUNDLE, else the system's)",
    )(f)
    f = click.option(
        "--insecure", is_flag=True,
        help="allow plain HTTP (always allowed for loopback hosts: 127.0.0.0/8, localhost, [::1])",
    )(f)
    return f


def _output_options(f: F) -> F:
    f = click.option(
        "--json", "as_json", is_flag=True, help="machine-readable progress, one JSON object a line"
    )(f)
    f = click.option("-q", "--quiet", is_flag=True, help="no progress output")(f)
    return f


def _transfer_options(f: F) -> F:
    return click.option(
        "--jobs", type=click.IntRange(1, 64), default=None, envvar="FF_TRANSFER_JOBS",
        help="blobs moved at once (default 2, or $FF_TRANSFER_JOBS)",
    )(f)


def _options(**overrides: int | None) -> TransferOptions:
    from registry.transfer import TransferOptions

    try:
        return TransferOptions.from_env(**overrides)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _chunk_size(_ctx: object, _param: object, value: str | None) -> int | None:
    from registry.transfer import parse_size

    try:
        return None if value is None else parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM ask the transfer to stop where it can resume (each upload after its chunk in
    flight: Docker's distribution drops an upload session whose chunk was cut off); a second signal
    ends the process at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def _progress(quiet: bool, as_json: bool) -> Iterator[Callable[[object], None]]:
    """A progress callback for registry.remote, shown the way the flags ask: JSON lines, bars on a
    terminal, else nothing (registry.remote calls it from one thread at a time)."""
    from registry.transfer import ProgressEvent

    if quiet or not (as_json or sys.stderr.isatty()):
        yield lambda _e: None
        return
    if as_json:
        last: dict[str, float] = {}

        def emit(e: object) -> None:
            assert isinstance(e, ProgressEvent)
            now = time.monotonic()
            key = e.digest or e.status
            busy = e.status in ("pulling", "pushing") and 0 < e.completed < e.total
            if busy and now - last.get(key, 0) < 0.2:
                return
            last[key] = now
            click.echo(json.dumps(e.wire()))

        yield emit
        return
    with _bars() as show:
        yield show


@contextmanager
def _bars() -> Iterator[Callable[[object], None]]:
    """One rich bar per blob (bytes, rate, time left) and a total over all of them."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from registry.transfer import ProgressEvent

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), transient=False,
    ) as bar:
        tasks: dict[str, TaskID] = {}
        done: dict[str, int] = {}
        total: list[TaskID] = []

        def show(e: object) -> None:
            assert isinstance(e, ProgressEvent)
            if e.status == "total":
                total.append(bar.add_task(f"total {e.title[:29]}", total=e.total or None))
                return
            if not e.digest or e.status in ("resolving", "success", "manifest"):
                return
            if e.digest not in tasks:
                tasks[e.digest] = bar.add_task(f"{e.digest[7:19]} {e.title[:28]}", total=e.total or None)
            tid = tasks[e.digest]
            bar.update(tid, completed=e.completed, total=e.total or None)
            if e.status in ("exists", "mounted"):
                bar.update(tid, description=f"{e.digest[7:19]} {e.title[:18]} ({e.status})")
            done[e.digest] = e.completed
            if total:
                bar.update(total[0], completed=sum(done.values()))

        yield show


@click.command("push")
@click.argument("ref")
@click.argument("remote", required=False)
@_transport_options
@_transfer_options
@click.option(
    "--chunk-size", callback=_chunk_size, envvar="FF_CHUNK_SIZE", metavar="SIZE",
    help="largest upload request, e.g. 10MiB for registries that cap requests (default 64MiB)",
)
@_output_options
def push(
    ref: str, remote: str | None, insecure: bool, ca_file: str | None, jobs: int | None,
    chunk_size: int | None, quiet: bool, as_json: bool,
) -> None:
    """Push model REF from the store to REMOTE (host[:port]/ns/name:tag; default REF itself)."""
    from registry.remote import push as do_push
    from registry.store import Store
    opts = _options(jobs=jobs, chunk_size=chunk_size)
    with expected_errors(), _progress(quiet, as_json) as progress, _stop_on_signals() as stop:
        result = do_push(
            ref, store=Store(), remote_ref=remote, insecure=insecure, ca_file=ca_file, progress=progress,
            options=opts, stop=stop,
        )
    if as_json:
        from ffcli.delivery import push_summary

        click.echo(json.dumps({"status": "result", **asdict(result), **push_summary(ref)}))
    elif not quiet:
        click.echo(
            f"pushed {result.remote} ({result.digest}): {result.blobs_uploaded} blobs uploaded "
            f"({result.bytes_uploaded} bytes), {result.blobs_mounted} mounted, "
            f"{result.blobs_skipped} already there"
        )


@click.command("pull")
@click.argument("ref")
@click.option("--target", help="the variant's target (cpu, cuda, cuda:sm_90, …)")
@click.option("--quantize", help="the variant's quantization (q8_0, f16, int8, …)")
@click.option("--backend", help="the variant's backend (llamacpp, onnxruntime, tvm, tensorrt)")
@click.option("--variant", help="the variant by name (e.g. q8_0-cpu)")
@click.option("--all-variants", is_flag=True, help="pull every variant of the model")
@click.option("--as", "local_name", metavar="NAME:TAG", help="also store the model under this local name")
@click.option(
    "--verify-key", metavar="KEY", default=None,
    help="refuse the model unless it carries a cosign signature by this public key (FF_VERIFY_KEY)",
)
@_transport_options
@_transfer_options
@_output_options
def pull(
    ref: str,
    target: str | None,
    quantize: str | None,
    backend: str | None,
    variant: str | None,
    all_variants: bool,
    local_name: str | None,
    verify_key: str | None,
    insecure: bool,
    ca_file: str | None,
    jobs: int | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Pull REF (host[:port]/ns/name:tag or …@sha256:…): the variant that fits this machine."""
    from registry.remote import pull as do_pull
    from registry.store import Store

    opts = _options(jobs=jobs)
    with expected_errors(), _progress(quiet, as_json) as progress, _stop_on_signals() as stop:
        result = do_pull(
            ref, store=Store(), target=target, quantize=quantize, variant=variant, backend=backend,
            all_variants=all_variants, local_name=local_name, insecure=insecure, ca_file=ca_file,
            progress=progress, verify_key=verify_key, options=opts, stop=stop,
        )
    if as_json:
        click.echo(json.dumps({"status": "result", **asdict(result)}))
    elif not quiet:
        resumed = f", {result.bytes_resumed} resumed" if result.bytes_resumed else ""
        click.echo(
            f"pulled {result.remote} ({result.digest}): variants {', '.join(result.variants)}; "
            f"{result.bytes_downloaded} bytes downloaded{resumed}; stored as {', '.join(result.tags)}"
        )


@click.command("login")
@click.argument("host")
@click.option("-u", "--username", help="user name (asked for when missing)")
@click.option("-p", "--password", help="password (prefer --password-stdin)")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
@_transport_options
def login(
    host: str, username: str | None, password: str | None, password_stdin: bool, insecure: bool,
    ca_file: str | None,
) -> None:
    """Log in to registry HOST; credentials are checked, then saved in Docker's config.json."""
    from registry.auth import login as do_login

    if password_stdin:
        if password:
            raise click.UsageError("--password and --password-stdin are mutually exclusive")
        password = sys.stdin.read().rstrip("\r\n")
        if not password:
            raise click.UsageError("--password-stdin: standard input held no password")
    if not username:
        username = click.prompt("Username")
    if not password:
        password = click.prompt("Password", hide_input=True)
    with expected_errors():
        path = do_login(host, username or "", password or "", insecure=insecure, ca_file=ca_file)
    click.echo(f"Login succeeded (credentials saved in {path})")


@click.command("logout")
@click.argument("host")
def logout(host: str) -> None:
    """Remove the stored credentials for registry HOST."""
    from registry.auth import docker_config_path, remove_credentials

    with expected_errors():
        removed = remove_credentials(host)
    if not removed:
        raise click.ClickException(f"not logged in to {host} (in {docker_config_path()})")
    click.echo(f"Removed login credentials for {host}")


COMMANDS = [push, pull, login, logout]
