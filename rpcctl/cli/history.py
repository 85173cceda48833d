"""`rpcctl history`: finished jobs from the agents' durable history, one node or a fleet."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import click

from app_agent.wire import protocol, times
from rpcctl._settings import Settings
from rpcctl.cli._common import (
    emit_json,
    fleet_options,
    json_option,
    pass_settings,
    timeout_option,
)
from rpcctl.cli._fleet_table import fan_out
from rpcctl.cli._group import cli
from rpcctl.exceptions import UsageError

COLUMNS = ("JOB", "TASK", "CALLER", "NODE", "STARTED", "DURATION", "OUTCOME", "ERROR")


@cli.command()
@click.option("--since", metavar="WHEN", help="Only jobs started since: 30m, 1h, 2d, 1w or ISO.")
@click.option("--task", "task_glob", metavar="GLOB", help="Only tasks matching GLOB (* and ?).")
@click.option(
    "--identity",
    "identity_name",
    metavar="NAME",
    help="Only jobs the identity NAME called (to call as an identity, put --identity before "
    "the command).",
)
@click.option(
    "--limit",
    metavar="N",
    default=str(protocol.HISTORY_DEFAULT_LIMIT),
    show_default=True,
    help=f"At most N jobs (1 to {protocol.HISTORY_MAX_LIMIT:,}).",
)
@timeout_option(10.0, "Seconds to wait for the answer (per node).")
@fleet_options
@json_option
@pass_settings
def history(
    settings: Settings,
    since: str | None,
    task_glob: str | None,
    identity_name: str | None,
    limit: str,
    timeout: float,
    parallel: int,
    min_ok: int | None,
) -> None:
    """List finished jobs, newest first, from the app's durable history (running jobs: `jobs`).

    Columns: job id, task, caller, node, started, duration, outcome (state and exit code),
    the error's first line. On a fleet, the nodes' records merged newest first.
    """
    query = parse_query(since, task_glob, identity_name, limit)
    if settings.is_fleet:
        _fleet(settings, query, timeout, parallel, min_ok)
    with settings.connect(timeout) as conn:
        entries = conn.history(**query)
    if settings.json:
        emit_json({"ok": True, "result": entries})
        return
    _table(entries)


def parse_query(
    since: str | None, task: str | None, identity: str | None, limit: str
) -> dict[str, Any]:
    """The options as ``Client.history``'s arguments; UsageError (exit 2) naming what is wrong."""
    query: dict[str, Any] = {"task": task, "identity": identity}
    try:
        query["since"] = times.parse_since(since) if since is not None else None
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None
    if task is not None and (problem := protocol.task_glob_problem(task)) is not None:
        raise UsageError(f"--task: {problem}")
    if identity is not None and not identity.strip():
        raise UsageError("--identity: the identity name is empty")
    try:
        query["limit"] = int(limit)
    except ValueError:
        query["limit"] = 0
    if not 1 <= query["limit"] <= protocol.HISTORY_MAX_LIMIT:
        most = protocol.HISTORY_MAX_LIMIT
        msg = f"--limit: expected a whole number from 1 to {most:,}, not {limit!r}"
        raise UsageError(msg)
    return query


def merge(answers: Iterable[list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """Several nodes' records as one list, newest first, at most *limit*: nodes sharing a
    PostgreSQL table each answer with the others' records too, kept once (job id and node)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for entries in answers:
        for entry in entries:
            seen.setdefault((str(entry.get("job")), str(entry.get("node"))), entry)
    ordered = sorted(
        seen.values(), key=lambda e: (e.get("started") or 0, str(e.get("job"))), reverse=True
    )
    return ordered[:limit]


def _fleet(
    settings: Settings, query: dict[str, Any], timeout: float, parallel: int, min_ok: int | None
) -> None:
    outcome = fan_out(settings, "history", timeout, parallel, **query)
    code = outcome.exit_code(min_ok)
    merged = merge(outcome.results.values(), query["limit"])
    failed = {node: settings.explain(error) for node, error in outcome.bad_nodes.items()}
    no_match = outcome.no_match()
    if settings.json:
        nodes = [
            {"node": o.node, "ok": o.ok, **({"error": failed[o.node]} if o.node in failed else {})}
            for o in outcome.outcomes
        ]
        document: dict[str, Any] = {"ok": code == 0, "result": merged, "nodes": nodes}
        document.update(exit_code=code, summary=outcome.summary())
        if no_match is not None:
            document["no_match"] = no_match
        emit_json(document)
    else:
        _table(merged)
    for node, message in failed.items():
        click.echo(f"rpcctl: error: {node}: {message}", err=True)
    if no_match is not None:
        click.echo(f"rpcctl: error: {no_match}", err=True)
    click.echo(outcome.summary(), err=True)
    raise click.exceptions.Exit(code)


def _table(entries: list[dict[str, Any]]) -> None:
    if not entries:
        click.echo("no finished jobs in the history", err=True)
        return
    rows = [list(COLUMNS), *(_cells(entry) for entry in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    for row in rows:
        padded = [
            text.rjust(w) if i == 5 else text.ljust(w)
            for i, (text, w) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        click.echo("  ".join([*padded, row[-1]]).rstrip())


def _cells(entry: dict[str, Any]) -> list[str]:
    started = entry.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    took = entry.get("duration")
    state = str(entry.get("state", "?"))
    code = entry.get("exit_code")
    cells = [
        entry.get("job"),
        entry.get("task"),
        entry.get("identity") or entry.get("caller"),
        entry.get("node"),
        when,
        f"{took:.3f}s" if isinstance(took, int | float) else "",
        state if code is None else f"{state} ({code})",
        entry.get("error"),
    ]
    return [_one_line(cell) for cell in cells]


def _one_line(value: Any) -> str:
    """*value* on one line, printable: a task's error may carry newlines or escape codes."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "".join(c if c.isprintable() else " " for c in text)
