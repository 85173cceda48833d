"""The introspection commands: ``stack``, ``stats``, ``health``, ``profile``, ``mem``,
``log-level``.

Each works on one node or a fleet (``-n`` repeated, ``--nodes-file``, ``--discover``), with
``--json`` and the usual exit codes; ``health`` adds 8 (unhealthy). They are registered on
the main group when :mod:`rpcctl.cli` imports this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import click

from app_agent.wire import times
from app_agent.wire.words import plural
from rpcctl import _flamegraph
from rpcctl import _introspect_render as render
from rpcctl import client as client_mod
from rpcctl import fleet as fleet_mod
from rpcctl._settings import Settings
from rpcctl.cli._common import (
    emit_json,
    fleet_options,
    json_option,
    pass_settings,
    timeout_option,
)
from rpcctl.cli._fleet_table import run_fleet
from rpcctl.cli._group import cli
from rpcctl.exceptions import ConfigError, Unhealthy, UsageError

HEALTH_TIMEOUT = 10.0


def _connect(settings: Settings, timeout: float) -> client_mod.Client:
    return client_mod.Client(settings.address(), timeout, settings.security())


def _fan_out(
    settings: Settings,
    action: Callable[[client_mod.Client], Any],
    timeout: float,
    parallel: int,
) -> fleet_mod.MulticallResult:
    """*action(client)* on every node, each within *timeout* seconds in all."""

    return fleet_mod.on_clients(
        settings.fleet(),
        lambda conn, _deadline: action(conn),
        timeout=timeout,
        parallel=parallel,
        security=settings.security(),
        where=settings.where,
    )


def _table(
    settings: Settings,
    outcome: fleet_mod.MulticallResult,
    min_ok: int | None,
    line: Callable[[Any], str],
) -> None:
    """A fleet as the other fleet commands show it: a table of one line per node (the
    result summarised by *line*), or JSON lines with every node's whole result."""
    if not settings.json:
        for node in outcome.outcomes:
            if node.ok:
                node.result = line(node.result)
    run_fleet(settings, outcome, min_ok)


def _sections(
    settings: Settings,
    outcome: fleet_mod.MulticallResult,
    min_ok: int | None,
    show: Callable[[Any], str],
) -> None:
    """A fleet whose results are long (stacks): one section per node, then the summary."""
    if settings.json:
        run_fleet(settings, outcome, min_ok)
    for node in outcome.outcomes:
        click.echo(f"=== {node.node}")
        if node.error is None:
            click.echo(show(node.result), nl=False)
        else:
            click.echo(f"{node.error.kind}: {node.error.message}")
        click.echo()
    click.echo(outcome.summary())
    raise click.exceptions.Exit(outcome.exit_code(min_ok))


# -- stack -------------------------------------------------------------------------------------


@cli.command()
@click.option("--all", "show_all", is_flag=True, help="Also show the agent's idle threads.")
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Seconds to wait for the answer (per node).")
@fleet_options
@json_option
@pass_settings
def stack(
    settings: Settings, show_all: bool, timeout: float, parallel: int, min_ok: int | None
) -> None:
    """Print every thread's stack, innermost frame last, and the app loop's asyncio tasks.

    Like `py-spy dump`, from inside the process (no ptrace). The agent's idle threads are
    folded into one line; a thread of the agent that runs a job shows its job.
    """
    if settings.is_fleet:
        result = _fan_out(settings, lambda c: c.stack(), timeout, parallel)
        _sections(settings, result, min_ok, lambda r: render.stack(r, show_all))
    with _connect(settings, timeout) as conn:
        found = conn.stack()
    if settings.json:
        emit_json({"ok": True, "result": found})
    else:
        click.echo(render.stack(found, show_all), nl=False)


# -- stats -------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--objects",
    type=click.IntRange(min=0, max=1000),
    default=0,
    metavar="N",
    help="Also count objects by type (those the GC tracks) and show the N most common.",
)
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Seconds to wait for the answer (per node).")
@fleet_options
@json_option
@pass_settings
def stats(
    settings: Settings, objects: int, timeout: float, parallel: int, min_ok: int | None
) -> None:
    """Show pid, uptime, memory, CPU, threads, open files, GC and versions."""
    if settings.is_fleet:
        result = _fan_out(settings, lambda c: c.stats(objects), timeout, parallel)
        _table(settings, result, min_ok, render.stats_line)
    with _connect(settings, timeout) as conn:
        found = conn.stats(objects)
    if settings.json:
        emit_json({"ok": True, "result": found})
    else:
        click.echo(render.stats(found), nl=False)


# -- health ------------------------------------------------------------------------------------


@cli.command()
@timeout_option(
    HEALTH_TIMEOUT, "A check still running after SECONDS fails (each also has its own timeout)."
)
@fleet_options
@json_option
@pass_settings
def health(settings: Settings, timeout: float, parallel: int, min_ok: int | None) -> None:
    """Run the app's health checks and the agent's own; exit 8 naming each failed one.

    Built in: the app's event loop answers in time (when the agent runs on one), and no
    job runs past its timeout. The app adds checks with @health_check. For a liveness
    probe; `ping` stays the cheap one.
    """
    if settings.is_fleet:
        per_node = timeout + client_mod.DEFAULT_TIMEOUT
        result = _fan_out(settings, lambda c: c.health(timeout), per_node, parallel)
        _table(settings, result, min_ok, render.health_line)
    with _connect(settings, client_mod.DEFAULT_TIMEOUT) as conn:
        try:
            report = conn.health(timeout)
        except Unhealthy as exc:
            _unhealthy(settings, exc)
    if settings.json:
        emit_json({"ok": True, "result": report})
    else:
        click.echo(render.health(report["checks"]), nl=False)


def _unhealthy(settings: Settings, exc: Unhealthy) -> None:
    if settings.json:
        error = {**exc.to_dict(), "checks": exc.checks}
        emit_json({"ok": False, "error": error})
    else:
        click.echo(render.health(exc.checks), nl=False)
    click.echo(f"rpcctl: error: {exc.message}", err=True)
    raise click.exceptions.Exit(exc.exit_code)


# -- profile -----------------------------------------------------------------------------------

FORMATS = ("collapsed", "speedscope", "svg")


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, max=3600, min_open=True),
    required=True,
    metavar="N",
    help="How long to sample (at most 3600).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="collapsed",
    show_default=True,
    help="collapsed stacks (flamegraph.pl), speedscope JSON, or an SVG flame graph.",
)
@click.option("--out", metavar="FILE", help="Write the profile to FILE instead of stdout.")
@click.option(
    "--rate",
    type=click.FloatRange(min=1, max=1000),
    default=100.0,
    show_default=True,
    metavar="HZ",
    help="Samples per second.",
)
@click.option("--idle", is_flag=True, help="Also count threads that used no CPU (waiting).")
@fleet_options
@json_option
@pass_settings
def profile(
    settings: Settings,
    seconds: float,
    fmt: str,
    out: str | None,
    rate: float,
    idle: bool,
    parallel: int,
    min_ok: int | None,
) -> None:
    """Sample every thread's stack for N seconds from inside the app; a flame graph's input.

    Threads that use no CPU are left out unless --idle. One profile at a time per app (a
    second one exits 7). With a fleet, every node is profiled at once and the stacks are
    merged under each node's name.
    """
    if out is not None:
        _check_writable(out)
    if settings.is_fleet:
        per_node = seconds + 2 * client_mod.DEFAULT_TIMEOUT
        outcome = _fan_out(settings, lambda c: c.profile(seconds, rate, idle), per_node, parallel)
        if settings.json:
            run_fleet(settings, outcome, min_ok)
        for node in outcome.outcomes:
            if node.error is not None:
                click.echo(f"rpcctl: error: {node.node}: {node.error.message}", err=True)
        good = [(o.node, o.result) for o in outcome.outcomes if o.ok]
        if good:
            _write_profile(good, fmt, out, fleet=True)
        click.echo(outcome.summary(), err=True)
        raise click.exceptions.Exit(outcome.exit_code(min_ok))
    address = settings.address()
    with client_mod.Client(address, client_mod.DEFAULT_TIMEOUT, settings.security()) as conn:
        data = conn.profile(seconds, rate, idle)
    if data.get("ended", "done") != "done":
        click.echo(f"rpcctl: the profile ended early ({data['ended']})", err=True)
    if settings.json:
        emit_json({"ok": True, "result": data})
        return
    _write_profile([(str(address), data)], fmt, out, fleet=False)


def _check_writable(path: str) -> None:
    """Refuse an --out that cannot be written before profiling, not after."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        msg = f"cannot write {path}: it is a directory"
        raise ConfigError(msg)
    if not os.path.isdir(directory):
        msg = f"cannot write {path}: no directory {directory}"
        raise ConfigError(msg)
    target = path if os.path.exists(path) else directory
    if not os.access(target, os.W_OK):
        msg = f"cannot write {path}: permission denied"
        raise ConfigError(msg)


def _write_profile(
    profiles: list[tuple[str, dict[str, Any]]], fmt: str, out: str | None, fleet: bool
) -> None:
    samples = sum(p["samples"] for _n, p in profiles)
    if fmt == "speedscope":
        text = _flamegraph.speedscope_text(
            [(n if fleet else "", p) for n, p in profiles], "rpcctl profile"
        )
    else:
        stacks = [
            s for n, p in profiles for s in _flamegraph.stacks(p, prefix=(n,) if fleet else ())
        ]
        if fmt == "svg":
            what = plural(len(profiles), "node") if fleet else profiles[0][0]
            text = _flamegraph.svg(stacks, _flamegraph.title_of(_totals(profiles), what))
        else:
            text = _flamegraph.collapsed(stacks)
    if out is None:
        click.echo(text, nl=False)
    else:
        try:
            with open(out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            msg = f"cannot write {out}: {exc.strerror}"
            raise ConfigError(msg) from None
    first = profiles[0][1]
    note = (
        f"{plural(samples, 'sample')} at {first['rate']:g} Hz over {first['seconds']:g} s"
        f" (the sampler used {100 * first['sampler_cpu_s'] / max(first['seconds'], 1e-9):.1f}%"
        " of one CPU)"
    )
    if samples == 0:
        note += "; no thread used CPU (--idle counts waiting threads too)"
    click.echo(f"rpcctl: {note}" + (f"; wrote {out}" if out else ""), err=True)


def _totals(profiles: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    first = profiles[0][1]
    return {
        "samples": sum(p["samples"] for _n, p in profiles),
        "rate": first["rate"],
        "seconds": first["seconds"],
    }


# -- mem ---------------------------------------------------------------------------------------

MEM_GROUPS = ("line", "file", "traceback")


def _finite(_ctx: click.Context, param: click.Parameter, value: float) -> float:
    # FloatRange lets nan through (every comparison with it is false).
    if math.isnan(value):
        msg = f"{value} is not a number of seconds"
        raise click.BadParameter(msg, param=param)
    return value


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, max=3600, min_open=True),
    default=10.0,
    show_default=True,
    callback=_finite,
    metavar="N",
    help="How long to trace allocations (at most 3600).",
)
@click.option(
    "--top",
    type=click.IntRange(min=1, max=1000),
    default=10,
    show_default=True,
    metavar="K",
    help="How many of the sites that grew most to show.",
)
@click.option(
    "--group-by",
    type=click.Choice(MEM_GROUPS),
    default="line",
    show_default=True,
    help="line: the app's own line that allocated (a library's inside it shown as `via`); "
    "file: its file; traceback: the whole call chain.",
)
@timeout_option(
    client_mod.DEFAULT_TIMEOUT,
    "Seconds to wait for the answer beyond N (per node): comparing a large traced heap "
    "takes a while.",
)
@fleet_options
@json_option
@pass_settings
def mem(
    settings: Settings,
    seconds: float,
    top: int,
    group_by: str,
    timeout: float,
    parallel: int,
    min_ok: int | None,
) -> None:
    """Find what grows: trace the app's allocations for N seconds (tracemalloc, inside the
    app) and show the K allocation sites that grew most.

    Tracing slows the app's allocations while it runs, and stops after (or as soon as this
    command goes away); an app that already traces (PYTHONTRACEMALLOC) is compared and left
    tracing. One at a time per app (a second one exits 7).
    """

    def action(c: client_mod.Client) -> dict[str, Any]:
        return c.mem(seconds, top, group_by)

    if settings.is_fleet:
        outcome = _fan_out(settings, action, seconds + timeout, parallel)
        _sections(settings, outcome, min_ok, render.mem)
    with _connect(settings, timeout) as conn:
        found = action(conn)
    if settings.json:
        emit_json({"ok": True, "result": found})
    else:
        click.echo(render.mem(found), nl=False)


# -- log-level -------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``1.5h``, ``500ms``, ``1d`` as seconds; UsageError otherwise."""
    try:
        return times.parse_duration(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


@cli.command("log-level")
@click.argument("level", required=False)
@click.option("--logger", metavar="NAME", help="The logger (default: the root logger).")
@click.option(
    "--for",
    "for_",
    metavar="DURATION",
    help="Set the level for this long (30s, 10m, 1h), then the agent puts the old one back.",
)
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Seconds to wait for the answer (per node).")
@fleet_options
@json_option
@pass_settings
def log_level(
    settings: Settings,
    level: str | None,
    logger: str | None,
    for_: str | None,
    timeout: float,
    parallel: int,
    min_ok: int | None,
) -> None:
    """Show or set the app's stdlib logging levels at run time.

    Without LEVEL: the root logger and every logger with a level of its own (or --logger's).
    With LEVEL (DEBUG, INFO, WARNING, ERROR, CRITICAL or a number): set it; structlog set up
    on top of stdlib logging follows.
    """
    duration = parse_duration(for_) if for_ is not None else None
    if duration is not None and level is None:
        msg = "--for needs a LEVEL to set, e.g. `rpcctl log-level DEBUG --for 10m`"
        raise UsageError(msg)
    show = render.log_levels if level is None else render.log_level_set
    line = render.log_levels_line if level is None else one_line(render.log_level_set)

    def action(c: client_mod.Client) -> dict[str, Any]:
        return c.log_level(level, logger, duration)

    if settings.is_fleet:
        _table(settings, _fan_out(settings, action, timeout, parallel), min_ok, line)
    with _connect(settings, timeout) as conn:
        found = action(conn)
    if settings.json:
        emit_json({"ok": True, "result": found})
    else:
        click.echo(show(found), nl=False)


def one_line(show: Callable[[dict[str, Any]], str]) -> Callable[[Any], str]:
    return lambda result: show(result).strip()
