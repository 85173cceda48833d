"""Asking an app (or a fleet) how it is: `ping`, `tasks`, `info`."""

from __future__ import annotations

import time

import click

from app_agent.wire.words import REGISTER_TASKS
from rpcctl import client as client_mod
from rpcctl import fleet as fleet_mod
from rpcctl import waits
from rpcctl._settings import PING_OPTIONS, Settings
from rpcctl.cli._common import (
    emit_json,
    fleet_options,
    json_option,
    options,
    pass_settings,
    timeout_option,
)
from rpcctl.cli._fleet_table import fan_out, info_cells, run_fleet, tasks_cells, tasks_details
from rpcctl.cli._group import cli


@cli.command()
@options(PING_OPTIONS)
@fleet_options
@json_option
@pass_settings
def ping(
    settings: Settings,
    wait: float | None,
    ready: bool,
    timeout: float,
    parallel: int,
    min_ok: int | None,
) -> None:
    """Print pong when the agent answers; exit 3 when it does not.

    Liveness is `ping`, readiness is `ping --ready`, as Kubernetes asks them.
    """
    if settings.is_fleet:
        result = fleet_mod.ping_all(
            settings.fleet(),
            timeout=timeout,
            parallel=parallel,
            security=settings.security(),
            ready=ready,
            wait=wait,
            where=settings.where,
        )
        run_fleet(settings, result, min_ok)
    address = settings.address()
    security = settings.security()
    if wait is not None:
        waited = waits.wait_for(address, wait, security, ready=ready)
    else:
        waits.ping(address, timeout, security, ready=ready)
        waited = 0.0
    if settings.json:
        emit_json({"ok": True, "result": "pong", "node": str(address), "waited_s": waited})
    else:
        click.echo("pong")


@cli.command()
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Seconds to wait for the answer (per node).")
@fleet_options
@json_option
@pass_settings
def tasks(settings: Settings, timeout: float, parallel: int, min_ok: int | None) -> None:
    """List the registered tasks with their signatures and first docstring lines."""
    if settings.is_fleet:
        run_fleet(
            settings,
            fan_out(settings, "tasks", timeout, parallel),
            min_ok,
            columns=["TASKS"],
            cells=tasks_cells,
            details=tasks_details,
        )
    with settings.connect(timeout) as conn:
        found = conn.tasks()
    if settings.json:
        emit_json({"ok": True, "result": found})
        return
    if not found:
        identity = settings.security().identity
        if identity:  # its grants may hide tasks that exist
            click.echo(f"no tasks registered that identity {identity!r} may run", err=True)
        else:
            click.echo(f"no tasks registered: {REGISTER_TASKS}", err=True)
    for task in found:
        click.echo(task["signature"])
        if task.get("alias"):
            click.echo(f"    alias: {task['alias']}")
        if task.get("lock"):
            click.echo(f"    lock: {task['lock']}")
        if task.get("timeout"):
            click.echo(f"    timeout: {task['timeout']:g}s")
        if task.get("doc"):
            click.echo(f"    {task['doc']}")


@cli.command()
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Seconds to wait for the answer (per node).")
@fleet_options
@json_option
@pass_settings
def info(settings: Settings, timeout: float, parallel: int, min_ok: int | None) -> None:
    """Show the app's pid, uptime, versions, node and running jobs."""
    if settings.is_fleet:
        run_fleet(
            settings,
            fan_out(settings, "info", timeout, parallel),
            min_ok,
            columns=["APP", "PID", "UPTIME", "READY", "JOBS", "VERSION", "RPCCTL"],
            cells=info_cells,
        )
    with settings.connect(timeout) as conn:
        details = conn.info()
    if settings.json:
        emit_json({"ok": True, "result": details})
        return
    versions = details.get("versions", {})
    click.echo(f"app:      {details.get('app')}")
    click.echo(f"version:  {details.get('version') or '(unknown)'}")
    click.echo(f"pid:      {details.get('pid')}")
    click.echo(f"node:     {details.get('node')}")
    click.echo(f"uptime:   {details.get('uptime_s')}s")
    drained = details.get("drained")
    if drained:  # an agent older than drain has no such key
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(drained["since"]))
        click.echo(f"drained:  since {since} by {drained['by']} (not ready)")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    jobs = details.get("jobs", [])
    click.echo(f"jobs:     {len(jobs)} running")
    for job in jobs:
        click.echo(f"  {job['id']}  {job['task']}  {job['duration_s']}s  {job['caller']}")
