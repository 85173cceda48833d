"""Taking an app (or a fleet) out of readiness for a deploy and back: `drain`, `resume`.

The agent does the work (app_agent/_server/drain.py); this module turns its report into a line, and
into an exit code: 1 when one of the app's hooks raised, 4 when jobs were still running
after --wait-jobs. Either way the app stays drained: the report says so on stdout, the
error on stderr.
"""

from __future__ import annotations

import time
from typing import Any

import click

from app_agent.wire.protocol import MAX_DRAIN_WAIT
from app_agent.wire.words import plural
from rpcctl import client as client_mod
from rpcctl._introspect_render import duration
from rpcctl._settings import SECONDS, Option, Settings
from rpcctl.cli._common import (
    click_option,
    emit_json,
    fleet_options,
    json_option,
    pass_settings,
    timeout_option,
)
from rpcctl.cli._fleet_table import fan_out, run_fleet
from rpcctl.cli._group import cli
from rpcctl.exceptions import CallTimeout, RpcctlError, TaskFailed

DRAIN_TIMEOUT = 30.0
"""Seconds for the agent's answer, its hooks included (--wait-jobs comes on top)."""


@cli.command()
@click_option(
    Option(
        ("--wait-jobs",),
        "wait_jobs",
        "SECONDS",
        "Then wait up to SECONDS for running jobs to end (exit 4 if some still run).",
        kind=SECONDS,
        default=0.0,
        maximum=MAX_DRAIN_WAIT,
    )
)
@timeout_option(
    DRAIN_TIMEOUT, "Seconds for the answer, hooks included (per node; plus --wait-jobs)."
)
@fleet_options
@json_option
@pass_settings
def drain(
    settings: Settings, wait_jobs: float, timeout: float, parallel: int, min_ok: int | None
) -> None:
    """Take the app out of readiness: `ping --ready` exits 3 from now on (`ping` still 0).

    Runs the app's @app_agent.on_drain hooks and, with --wait-jobs, waits for running jobs
    to end. Idempotent: draining a drained app says since when and by whom. Exit 1 when a
    hook raised, 4 when jobs still run after --wait-jobs; the app is drained either way.
    Needs the drain grant.
    """

    def act(conn: client_mod.Client) -> dict[str, Any]:
        report = conn.drain(wait_jobs)
        _check_drain(report, wait_jobs)
        return report

    if settings.is_fleet:
        run_fleet(
            settings,
            fan_out(settings, act, timeout + wait_jobs, parallel),
            min_ok,
            ["DRAINED"],
            lambda r: [_drain_line(r)],
        )
    with settings.connect(timeout) as conn:
        report = conn.drain(wait_jobs)
    if not settings.json:
        click.echo(f"{conn.address}: {_drain_line(report)}")
    _check_drain(report, wait_jobs)
    if settings.json:
        emit_json({"ok": True, "result": report})


@cli.command()
@timeout_option(DRAIN_TIMEOUT, "Seconds for the answer, hooks included (per node).")
@fleet_options
@json_option
@pass_settings
def resume(settings: Settings, timeout: float, parallel: int, min_ok: int | None) -> None:
    """Put a drained app back: run its @app_agent.on_resume hooks, then mark it ready.

    Not drained: nothing to do (exit 0). Exit 1 when a hook raised: the app then stays
    drained, and `resume` may be run again. Needs the drain grant.
    """

    def act(conn: client_mod.Client) -> dict[str, Any]:
        report = conn.resume()
        _check_resume(report)
        return report

    if settings.is_fleet:
        run_fleet(
            settings,
            fan_out(settings, act, timeout, parallel),
            min_ok,
            ["RESUMED"],
            lambda r: [_resume_line(r)],
        )
    with settings.connect(timeout) as conn:
        report = conn.resume()
    if not settings.json:
        click.echo(f"{conn.address}: {_resume_line(report)}")
    _check_resume(report)
    if settings.json:
        emit_json({"ok": True, "result": report})


def _check_drain(report: dict[str, Any], wait_jobs: float) -> None:
    """The error of a drain that did not go all the way (the app is drained regardless)."""
    failed = report.get("failed") or []
    if failed:
        raise _hook_error("drained, but", "on_drain", report)
    running = report.get("running") or []
    if wait_jobs and running:
        jobs = ", ".join(f"{j['id']} ({j['task']})" for j in running[:5])
        more = ", ..." if len(running) > 5 else ""
        msg = (
            f"drained, but {plural(len(running), 'job')} still running after "
            f"{wait_jobs:g}s: {jobs}{more}; `rpcctl jobs` lists them"
        )
        raise CallTimeout(msg)


def _check_resume(report: dict[str, Any]) -> None:
    if report.get("failed"):
        raise _hook_error("still drained:", "on_resume", report, " (run resume again once fixed)")


def _hook_error(prefix: str, kind: str, report: dict[str, Any], suffix: str = "") -> RpcctlError:
    failed = [h for h in report.get("hooks") or [] if not h.get("ok")]
    what = "; ".join(f"{h['name']}: {h.get('error', 'failed')}" for h in failed)
    hooks = "hook" if len(failed) == 1 else "hooks"
    return TaskFailed(f"{prefix} {kind} {hooks} failed: {what}{suffix}")


def _drain_line(report: Any) -> str:
    report = report if isinstance(report, dict) else {}
    drained = report.get("drained") or {}
    if report.get("already"):
        since = float(drained.get("since") or 0)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
        ago = duration(max(time.time() - since, 0))
        return f"already drained since {when} ({ago} ago) by {drained.get('by')}"
    hooks = report.get("hooks") or []
    return f"drained: not ready ({plural(len(hooks), 'on_drain hook')} ran)"


def _resume_line(report: Any) -> str:
    report = report if isinstance(report, dict) else {}
    if report.get("was") is None:
        return "not drained: nothing to resume"
    hooks = report.get("hooks") or []
    state = "resumed: ready again" if report.get("resumed") else "still drained"
    return f"{state} ({plural(len(hooks), 'on_resume hook')} ran)"
