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
        self.dropped = 0  # events the agent dropped before this client read them
        self.dropped_total = 0  # the same, not reset by close()
        self._notes: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "dropped":
            self.dropped += int(event.get("count") or 0)
            self.dropped_total += int(event.get("count") or 0)
        elif kind == "result_dropped":
            self._notes.append(f"rpcctl: {event.get('message')}")
        if self.as_json:
            _write(sys.stdout, _encode(event))
            return
        if kind in ("dropped", "result_dropped"):
            return  # said once, at the end (close)
        if kind == "progress":
            self._progress(event)
            return
        self._clear_bar()
        # Written as the task wrote them (click.echo would cost 4x as much per line).
        _write(sys.stdout if kind == "stdout" else sys.stderr, event.get("line", ""))

    def close(self) -> None:
        """Clear the progress bar; say on stderr what the agent dropped (once, at the end,
        in JSON mode too: the "dropped" events carry the same on stdout)."""
        self._clear_bar()
        if self.dropped:
            click.echo(dropped_message(self.dropped), err=True)
            self.dropped = 0
        for note in self._notes:
            click.echo(note, err=True)
        self._notes.clear()

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


_encode = json.JSONEncoder(ensure_ascii=False).encode


def _write(stream: Any, line: str) -> None:
    """One line, flushed (followers see it live)."""
    stream.write(line + "\n")
    stream.flush()


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dropped_message(count: int) -> str:
    """The one line that says a job's output has a gap."""
    what = "event was" if count == 1 else "events were"
    return (
        f"rpcctl: {count:,} output {what} dropped: the agent keeps a bounded buffer per job "
        "and drops the oldest lines when no client reads them in time (see docs/jobs.md)"
    )
