"""Running tasks and following jobs: `rpc`, `jobs`, `logs`, `wait`, `cancel`."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import click

from rpcctl import client as client_mod
from rpcctl import fleet as fleet_mod
from rpcctl._render import EventPrinter
from rpcctl._settings import Settings
from rpcctl._where import Skipped, Where
from rpcctl.exceptions import ConfigError, RpcctlError, Unreachable

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

from rpcctl.cli._common import (
    COMPLETION_TIMEOUT,
    Interrupted,
    emit_json,
    fleet_options,
    json_option,
    lock_wait_option,
    pass_settings,
    render,
    task_expression,
    timeout_option,
)
from rpcctl.cli._fleet_table import run_fleet
from rpcctl.cli._group import apply_globals, cli


def complete_tasks(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion for EXPR: the task names (and aliases) of the node the command line
    names, or nothing when no app answers within COMPLETION_TIMEOUT."""
    from click.shell_completion import CompletionItem

    if ctx.params.get("words"):
        return []  # EXPR is one word: the task name comes first, only once
    root = ctx.find_root()
    settings = root.obj if isinstance(root.obj, Settings) else Settings()
    apply_globals(settings, root.params)
    if not settings.nodes and (settings.nodes_file or settings.discover):
        return []
    settings.nodes = settings.nodes[:1]  # a fleet: its first node
    found: list[dict[str, Any]] = []
    with (
        contextlib.suppress(RpcctlError, OSError, EOFError),
        settings.connect(COMPLETION_TIMEOUT) as conn,
    ):
        found = conn.tasks()
    items: list[CompletionItem] = []
    for task in found:
        for name in (task.get("name"), task.get("alias")):
            if isinstance(name, str) and name.startswith(incomplete):
                items.append(CompletionItem(name, help=task.get("doc") or None))
    return items


@cli.command()
@click.argument("words", metavar="EXPR", nargs=-1, required=True, shell_complete=complete_tasks)
@timeout_option(None, "Stop waiting after SECONDS (exit 4); the job keeps running.")
@click.option("--detach", is_flag=True, help="Start the job, print its id and return at once.")
@lock_wait_option
@click.option("--one", is_flag=True, help="Fleets: run on the first node that answers only.")
@fleet_options
@json_option
@pass_settings
def rpc(
    settings: Settings,
    words: tuple[str, ...],
    timeout: float | None,
    detach: bool,
    lock_wait: float,
    one: bool,
    parallel: int,
    min_ok: int | None,
) -> None:
    """Run a task: EXPR is module.func or module.func(literal, key=literal).

    Arguments are parsed as literals (strings, numbers, True/False/None, lists, dicts),
    never evaluated. Quote EXPR for the shell: rpcctl rpc 'myapp.tasks.migrate("head")'.
    What the task prints and logs is shown live (its stdout on stdout, its stderr on
    stderr), and its progress as a bar on a terminal. Ctrl-C stops following (exit 130);
    the job goes on.
    """
    call = task_expression(settings, "rpc", words, lock_wait)
    if settings.is_fleet and not one and detach:
        msg = "--detach starts a job on one node: give one --node, or add --one"
        raise ConfigError(msg)
    if settings.is_fleet and not one:
        result = fleet_mod.multicall(
            settings.fleet(),
            call.name,
            *call.args,
            timeout=timeout or 30.0,
            parallel=parallel,
            security=settings.security(),
            lock_wait=lock_wait,
            where=settings.where,
            **call.kwargs,
        )
        run_fleet(settings, result, min_ok)
    where = Where.parse(settings.where)
    if settings.is_fleet:
        chosen = fleet_mod.first_answering(
            settings.fleet(),
            timeout=client_mod.DEFAULT_TIMEOUT,
            security=settings.security(),
            parallel=parallel,
            where=where,
        )
        click.echo(f"running on {chosen}", err=True)
        settings.node = str(chosen)
        settings.nodes = [settings.node]
        settings.nodes_file = settings.discover = None
        settings.where = []
    # Connecting and the handshake wait no longer than --timeout either.
    with settings.connect(
        min(timeout or client_mod.DEFAULT_TIMEOUT, client_mod.DEFAULT_TIMEOUT)
    ) as conn:
        try:
            where.check_client(conn)  # on the connection that runs the call
        except Skipped as changed:
            msg = f"{conn.address} no longer matches: it {changed.reason}; nothing ran"
            raise Unreachable(msg) from None
        job_id: str | None = None
        try:
            job_id = conn.start(
                call.name, call.args, call.kwargs, lock_wait=lock_wait, follow=not detach
            )
            if detach:
                if settings.json:
                    emit_json({"ok": True, "result": {"job": job_id}})
                else:
                    click.echo(job_id)
                    click.echo(
                        f"started job {job_id}: follow it with "
                        f"`{settings.prog} logs {job_id} --follow`",
                        err=True,
                    )
                return
            printer = EventPrinter(settings.json)
            try:
                result = conn.follow(job_id, timeout=timeout, on_event=printer)
            finally:
                printer.close()
        except KeyboardInterrupt:
            raise Interrupted(job_id) from None
    if settings.json:
        dropped = {"dropped": printer.dropped_total} if printer.dropped_total else {}
        emit_json({"ok": True, "result": result, **dropped})
    else:
        render(result)


@cli.command()
@json_option
@pass_settings
def jobs(settings: Settings) -> None:
    """List recent and running jobs: id, task, caller, state, start, duration."""
    settings.single("jobs")
    with settings.connect() as conn:
        found = conn.jobs()
    if settings.json:
        emit_json({"ok": True, "result": found})
        return
    if not found:
        click.echo("no jobs yet", err=True)
        return
    import time

    click.echo(f"{'JOB':<10}{'STATE':<11}{'STARTED':<21}{'DURATION':>10}  TASK  (CALLER)")
    for job in found:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job["started_at"]))
        click.echo(
            f"{job['id']:<10}{job['state']:<11}{started:<21}{job['duration_s']:>9.1f}s"
            f"  {job['task']}  ({job['caller']})"
        )


@cli.command()
@click.argument("job_id", metavar="JOB")
@click.option("--follow", "-f", is_flag=True, help="Keep showing new output until the job ends.")
@json_option
@pass_settings
def logs(settings: Settings, job_id: str, follow: bool) -> None:
    """Show a job's output from its start (what is kept of it), and follow it with -f."""
    settings.single("logs")
    printer = EventPrinter(settings.json)
    with settings.connect() as conn:
        try:
            snapshot = conn.events(job_id, 0, 0.0)  # an unknown job is an error (exit 2)
            if snapshot.get("dropped"):
                printer(client_mod.dropped_event(0, snapshot["dropped"]))
            for event in snapshot["events"]:
                printer(event)
            if follow and snapshot["state"] == "running":
                # How the job ends is `rpcctl wait`'s business; logs only shows its output.
                with contextlib.suppress(RpcctlError):
                    conn.follow(job_id, since=snapshot["cursor"], on_event=printer)
        finally:
            printer.close()
        summary = conn.job(job_id)
        if summary.get("result_dropped"):
            click.echo(f"rpcctl: {summary['result_dropped']}", err=True)
        if settings.json:
            emit_json({"ok": True, "result": summary})


@cli.command()
@click.argument("job_id", metavar="JOB")
@timeout_option(None, "Stop waiting after SECONDS (exit 4); the job keeps running.")
@json_option
@pass_settings
def wait(settings: Settings, job_id: str, timeout: float | None) -> None:
    """Wait for a job to end and exit with its outcome (0, 1 failed or cancelled, 4 ...)."""
    settings.single("wait")
    with settings.connect() as conn:
        result = conn.follow(job_id, timeout=timeout)
        # A result the agent did not keep (too big) reads as None: say so.
        note = conn.job(job_id).get("result_dropped") if result is None else None
    if note:
        click.echo(f"rpcctl: {note}", err=True)
    if settings.json:
        emit_json({"ok": True, "result": result, **({"result_dropped": note} if note else {})})
    else:
        render(result)


@cli.command()
@click.argument("job_id", metavar="JOB")
@json_option
@pass_settings
def cancel(settings: Settings, job_id: str) -> None:
    """Ask a running job to stop.

    A sync task stops where it checks app_agent.cancelled(); an async task is cancelled at
    its next await. `rpcctl wait JOB` then exits 1.
    """
    settings.single("cancel")
    with settings.connect() as conn:
        answer = conn.cancel(job_id)
    if settings.json:
        emit_json({"ok": True, "result": answer})
    elif answer["requested"]:
        click.echo(f"cancellation requested for job {job_id}")
    else:
        click.echo(f"job {job_id} already ended ({answer['state']})")
