"""Terminal output for the CLI: stage progress (rich on a terminal, plain lines otherwise) and tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

import click
from rich.console import Console
from rich.status import Status
from rich.table import Table


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def figure(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, int | float):
        return f"{value:.{digits}f}"
    try:
        return f"{float(str(value)):.{digits}f}"
    except ValueError:
        return str(value)


class PlainProgress:
    """One line per event, for logs and pipes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, stage: str) -> None:
        self._line(f"[{stage}] started")

    def step(self, stage: str, message: str) -> None:
        self._line(f"[{stage}] {message}")

    def done(self, stage: str, seconds: float, summary: str) -> None:
        self._line(f"[{stage}] done in {seconds:.1f}s: {summary}")


class RichProgress:
    """A spinner for the running stage and a checked line for each finished one (stderr)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.status: Status | None = None
        self.started = 0.0

    def start(self, stage: str) -> None:
        self.started = time.perf_counter()
        self.status = self.console.status(f"[bold]{stage}[/bold]")
        self.status.start()

    def step(self, stage: str, message: str) -> None:
        if self.status is not None:
            self.status.update(f"[bold]{stage}[/bold] {message}")

    def done(self, stage: str, seconds: float, summary: str) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None
        self.console.print(
            f"[green]✓[/green] [bold]{stage:<9}[/bold] {seconds:6.1f}s  {summary}", highlight=False
        )

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def make_progress() -> PlainProgress | RichProgress:
    return RichProgress() if sys.stderr.isatty() else PlainProgress()


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> None:
    """A table on stdout: rich when stdout is a terminal, aligned plain text otherwise."""
    if sys.stdout.isatty():
        table = Table(title=title, title_justify="left")
        for h in headers:
            table.add_column(h)
        for r in rows:
            table.add_row(*r)
        Console().print(table)
        return
    if title:
        click.echo(title)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
