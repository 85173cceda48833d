"""`eval`: run a registered task in a fresh process of the release (the app may be down)."""

from __future__ import annotations

import sys

import click

from rpcctl import evaluate
from rpcctl._render import EventPrinter
from rpcctl._settings import Settings
from rpcctl.cli._common import (
    INTERRUPTED,
    emit_json,
    json_option,
    lock_wait_option,
    pass_settings,
    render,
    task_expression,
    timeout_option,
)
from rpcctl.cli._group import cli
from rpcctl.exceptions import ConfigError
from rpcctl.release import config as config_mod


@cli.command("eval")
@click.argument("words", metavar="EXPR", nargs=-1, required=True)
@timeout_option(None, "Stop the task's process after SECONDS (exit 4): SIGTERM, then SIGKILL.")
@lock_wait_option
@json_option
@pass_settings
def eval_command(
    settings: Settings, words: tuple[str, ...], timeout: float | None, lock_wait: float
) -> None:
    """Run a task in a fresh process of the release, for when the app is not running.

    EXPR is written as for rpc and names a registered @task: its module (the part before the
    function's name) is imported, and the modules of [app] tasks in rpcctl.toml, with the
    release's interpreter, environment and working directory. No agent starts. Output,
    results and exit codes are those of rpc; the task's lock is taken through the
    configured backend (RPCCTL_LOCKS, else [app] locks), so a running replica and an eval
    never run it at once. Ctrl-C or --timeout stops the task's process.
    """
    if settings.nodes or settings.nodes_file or settings.discover:
        msg = (
            "eval runs the task in a fresh process on this host, not in a running app: it "
            f"takes no --node (to run it inside the app, use `{settings.prog} rpc`)"
        )
        raise ConfigError(msg)
    call = task_expression(settings, "eval", words, lock_wait)
    release = _release_config(settings)
    printer = EventPrinter(settings.json)
    try:
        result = evaluate.run(
            call.name,
            call.args,
            call.kwargs,
            config=release,
            timeout=timeout,
            lock_wait=lock_wait,
            on_event=printer,
            on_warning=lambda message: click.echo(f"rpcctl: warning: {message}", err=True),
        )
    except evaluate.Stopped as stopped:
        printer.close()
        _report_stopped(settings, stopped.pid)
        click.get_current_context().exit(INTERRUPTED)
    finally:
        printer.close()
    if settings.json:
        dropped = {"dropped": printer.dropped_total} if printer.dropped_total else {}
        emit_json({"ok": True, "result": result, **dropped})
    else:
        render(result)


def _release_config(settings: Settings) -> config_mod.Config | None:
    """--config, else the rpcctl.toml found upward, else none: the current directory and
    environment, as they are."""
    if settings.config_path:
        return settings.config()
    found = config_mod.find()
    return config_mod.load(found) if found is not None else None


def _report_stopped(settings: Settings, pid: int) -> None:
    if sys.stderr.isatty():
        click.echo(err=True)  # past the terminal's ^C
    message = f"interrupted; the task's process (pid {pid}) was stopped"
    click.echo(f"rpcctl: {message}", err=True)
    if settings.json:
        error = {"kind": "interrupted", "message": message, "exit_code": INTERRUPTED}
        emit_json({"ok": False, "error": error})
