"""Showing a job's events on the terminal: output lines, progress bars, JSON lines."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click


class EventPrinter:
    """Prints a job's events as they arrive.

    stdout lines go to stdout and stderr lines to stderr, as the task wrote them. Progress
    is a bar redrawn in place when stderr is a terminal, and a plain line otherwise. With
    *as_json*, every event is one JSON line on stdout instead.
    """

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self._bar_drawn = False

    def __call__(self, event: dict[str, Any]) -> None:
        if self.as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
            return
        kind = event.get("type")
        if kind == "progress":
            self._progress(event)
            return
        self._clear_bar()
        if kind == "stdout":
            click.echo(event.get("line", ""))
        else:
            click.echo(event.get("line", ""), err=True)

    def close(self) -> None:
        self._clear_bar()

    def _progress(self, event: dict[str, Any]) -> None:
        done, total, message = event.get("done"), event.get("total"), event.get("message")
        count = f"{_num(done)}/{_num(total)}" if total else f"{_num(done)}"
        text = f"{count} {message}" if message else count
        if not self.tty:
            click.echo(f"progress: {text}", err=True)
            return
        width = 30
        if total:
            filled = int(width * max(min(float(done or 0) / float(total), 1.0), 0.0))
            bar = "[" + "#" * filled + "." * (width - filled) + "] "
        else:
            bar = ""
        click.echo(f"\r\x1b[2K{bar}{text}", err=True, nl=False)
        self._bar_drawn = True

    def _clear_bar(self) -> None:
        if self._bar_drawn:
            click.echo("\r\x1b[2K", err=True, nl=False)
            self._bar_drawn = False


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
