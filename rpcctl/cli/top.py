"""``rpcctl top``: the live view of a node or a fleet (Textual, the extra ``rpcctl[top]``)."""

from __future__ import annotations

import sys

import click

from rpcctl._nodes import parse_node
from rpcctl._settings import POSITIVE_SECONDS, Option, Settings
from rpcctl._where import Where
from rpcctl.cli._common import _set_where, click_option, emit_json, json_option, pass_settings
from rpcctl.cli._group import cli
from rpcctl.exceptions import UsageError
from rpcctl.top import model

EXTRA = "pip install 'rpcctl[top]'"


@cli.command()
@click_option(
    Option(
        ("--interval",),
        "interval",
        "SECONDS",
        f"Seconds between two rounds of each node (at least {model.MIN_INTERVAL:g}).",
        POSITIVE_SECONDS,
        model.DEFAULT_INTERVAL,
    )
)
@click_option(
    Option(
        ("--timeout",),
        "timeout",
        "SECONDS",
        "A node's deadline per round; past it, the node shows down "
        "[default: twice the interval, at least 2 s].",
        POSITIVE_SECONDS,
    )
)
@click.option("--once", is_flag=True, help="Poll every node once, print, exit (with --json).")
@click.option(
    "--where",
    metavar="KEY=VALUE",
    multiple=True,
    expose_value=False,
    callback=_set_where,
    help="Only the nodes whose agent reports KEY=VALUE (version, app, ready, or any key at "
    "the top of `info`); repeat to require several.",
)
@json_option
@pass_settings
def top(settings: Settings, interval: float, timeout: float | None, once: bool) -> None:
    """A live view of the node or fleet: health, resources, running jobs.

    Keys: s stack, t stats, h health of the highlighted node; tab to the jobs, enter follows
    a job's output, c cancels it (after y); q quits. `--once --json` prints the same data
    once, for scripts (exit 0 when every node answered).
    """
    if interval < model.MIN_INTERVAL:
        msg = f"--interval {interval:g} is too short: at least {model.MIN_INTERVAL:g} seconds"
        raise UsageError(msg)
    if settings.json and not once:
        msg = "--json prints one snapshot: add --once (`rpcctl top --once --json`)"
        raise UsageError(msg)
    if once and not settings.json:
        msg = "--once prints JSON: add --json (`rpcctl top --once --json`)"
        raise UsageError(msg)
    nodes = settings.fleet() if settings.is_fleet else [str(settings.address())]
    for node in nodes:
        parse_node(node)  # a bad address is a usage error before anything connects
    security = settings.security()
    where = Where.parse(settings.where)
    fleet = model.Fleet(nodes, security, where, interval, timeout)
    if once:
        snapshot = fleet.poll_once()
        code = snapshot.exit_code()
        emit_json({"ok": code == 0, "result": snapshot.to_dict()})
        raise click.exceptions.Exit(code)
    try:
        from rpcctl.top.app import TopApp
    except ImportError:
        msg = f"`{settings.prog} top` needs Textual: {EXTRA} (or `top --once --json` without it)"
        raise UsageError(msg) from None
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        msg = f"`{settings.prog} top` draws on a terminal; for scripts: top --once --json"
        raise UsageError(msg)
    app = TopApp(fleet, settings.prog)
    try:
        app.run()
    finally:
        fleet.stop()
    raise click.exceptions.Exit(app.return_code or 0)
