"""Fleet results as a table (or JSON lines) and the exit code of the whole run."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

from rpcctl import client as client_mod
from rpcctl import fleet as fleet_mod
from rpcctl._introspect_render import duration
from rpcctl._settings import Settings

Cells = Callable[[Any], list[str]]
"""A table row's cells from one node's result."""


def run_fleet(
    settings: Settings,
    outcome: fleet_mod.MulticallResult,
    min_ok: int | None,
    columns: Sequence[str] = ("RESULT / ERROR",),
    cells: Cells | None = None,
    details: Callable[[fleet_mod.MulticallResult], list[str]] | None = None,
) -> None:
    """Print a fleet's outcomes (a table, or JSON lines) and exit with its code.

    A node that answered fills *columns* with *cells(result)* (default: the result on one
    line); a failed node shows its error there. *details* adds lines under the table.
    """
    code = outcome.exit_code(min_ok)
    no_match = outcome.no_match()
    if no_match is not None:
        click.echo(f"rpcctl: error: {no_match}", err=True)
    if settings.json:
        for node in outcome.outcomes:
            data = node.to_dict()
            if node.error is not None:
                data["error"]["message"] = settings.explain(node.error)
            click.echo(json.dumps(data, ensure_ascii=False))
        summary = {
            "summary": outcome.summary(),
            "duration_s": round(outcome.duration, 3),
            "ok": sum(o.ok for o in outcome.outcomes),
            "failed": len(outcome.bad_nodes),
            "skipped": len(outcome.skipped),
            "exit_code": code,
        }
        if no_match is not None:
            summary["no_match"] = no_match
        click.echo(json.dumps(summary))
        raise click.exceptions.Exit(code)
    cells = cells or (lambda result: [one_line(result)])
    head = ["NODE", "OUTCOME", "TIME", *columns]
    rows = []
    for o in outcome.outcomes:
        took = f"{o.duration * 1000:.0f} ms"
        if o.skipped is not None:
            rows.append([o.node, "skipped", took, o.skipped])
        elif o.error is None:
            rows.append([o.node, "ok", took, *cells(o.result)])
        else:
            rows.append([o.node, str(o.error.kind), took, settings.explain(o.error)])
    # Every cell but a row's last is padded; an error (a row's last) fills the rest of it.
    widths = [0] * (len(head) - 1)
    for row in [head, *rows]:
        for i, text in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(text))
    for row in [head, *rows]:
        padded = [
            text.rjust(widths[i]) if i == 2 else text.ljust(widths[i])
            for i, text in enumerate(row[:-1])
        ]
        click.echo("  ".join([*padded, row[-1]]).rstrip())
    for line in details(outcome) if details else []:
        click.echo(line)
    click.echo(outcome.summary())
    raise click.exceptions.Exit(code)


def one_line(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def info_cells(details: Any) -> list[str]:
    details = details if isinstance(details, dict) else {}
    ready, uptime = details.get("ready"), details.get("uptime_s")
    return [
        str(details.get("app", "")),
        str(details.get("pid", "")),
        duration(uptime) if isinstance(uptime, int | float) else "",
        "" if ready is None else "yes" if ready else "no",
        str(len(details.get("jobs") or [])),
        str(details.get("version") or "-"),
        str((details.get("versions") or {}).get("rpcctl", "")),
    ]


def tasks_cells(found: Any) -> list[str]:
    return [str(len(found)) if isinstance(found, list) else ""]


def tasks_details(outcome: fleet_mod.MulticallResult) -> list[str]:
    """Every task the nodes registered, once, with the nodes that lack it (a partial deploy)."""
    answered = [o for o in outcome.outcomes if o.ok and isinstance(o.result, list)]
    where: dict[str, list[str]] = {}
    for o in answered:
        for task in o.result:
            where.setdefault(str(task.get("signature") or task.get("name")), []).append(o.node)
    if not where:
        return []
    lines = ["", "TASKS"]
    for signature in sorted(where):
        nodes = where[signature]
        if len(nodes) == len(answered):
            lines.append(f"  {signature}")
        else:
            missing = [o.node for o in answered if o.node not in nodes]
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            lines.append(f"  {signature}  (on {len(nodes)}/{len(answered)}; not on {shown})")
    return lines


def fan_out(
    settings: Settings,
    method: str | Callable[[client_mod.Client], Any],
    timeout: float,
    parallel: int,
    **arguments: Any,
) -> fleet_mod.MulticallResult:
    """*method* of every node's client (those --where keeps), each within *timeout*: a
    method's name (called with *arguments*), or a function of the client."""

    def action(conn: client_mod.Client, _deadline: float) -> Any:
        return method(conn) if callable(method) else getattr(conn, method)(**arguments)

    return fleet_mod.on_clients(
        settings.fleet(),
        action,
        timeout=timeout,
        parallel=parallel,
        security=settings.security(),
        where=settings.where,
    )
