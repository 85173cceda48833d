"""The `rpcctl` group: its global options, and `main()`."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from app_agent import __version__
from rpcctl._settings import GLOBAL_OPTIONS, PROG_ENV, Settings
from rpcctl.cli._common import RpcctlGroup, global_options, json_option, pass_settings


@click.group(cls=RpcctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@global_options()
@click.version_option(__version__, "--version", prog_name="rpcctl")
@json_option
@pass_settings
def cli(settings: Settings, /, **params: Any) -> None:
    """Ping a running Python application and run release tasks inside it.

    Global options may also follow the command: `rpcctl ping -n unix:run/app.sock`.

    Exit codes: 0 ok, 1 the task raised, 2 usage error, 3 agent unreachable,
    4 timed out, 5 authentication refused, 6 no such task, 7 busy, 8 unhealthy,
    130 Ctrl-C.
    """
    apply_globals(settings, params)


cli.lazy = {
    **dict.fromkeys(("ping", "tasks", "info"), "rpcctl.cli.status"),
    **dict.fromkeys(("rpc", "jobs", "logs", "wait", "cancel"), "rpcctl.cli.calls"),
    **dict.fromkeys(("start", "stop", "restart", "pid", "release", "cookie"), "rpcctl.cli.release"),
    **dict.fromkeys(("stack", "stats", "health", "profile", "log-level"), "rpcctl.cli.introspect"),
    **dict.fromkeys(("drain", "resume"), "rpcctl.cli.drain"),
    "eval": "rpcctl.cli.eval",
    "remote": "rpcctl.cli.remote",
    "mem": "rpcctl.cli.introspect",
    "history": "rpcctl.cli.history",
    "top": "rpcctl.cli.top",
}


def apply_globals(settings: Settings, params: dict[str, Any]) -> None:
    """The group's options into *settings*; options not given keep what *settings* has."""
    for option in GLOBAL_OPTIONS:
        settings.apply(option.dest, params.get(option.dest))


COMPLETE_VAR = "_RPCCTL_COMPLETE"


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    extra: dict[str, Any] = {}
    if os.environ.get(COMPLETE_VAR) and args:
        # Completing through bin/NAME: the shell's words come in COMP_WORDS, and the
        # launcher's own options (--config) only here.
        settings = Settings()
        with contextlib.suppress(click.ClickException):
            parsed = cli.make_context("rpcctl", list(args), resilient_parsing=True)
            apply_globals(settings, parsed.params)
        extra["obj"] = settings
    # Through bin/NAME, usage lines name what the user typed, as the hints do.
    prog = os.environ.get(PROG_ENV) or "rpcctl"
    from rpcctl import _tracing

    # The caller's trace (TRACEPARENT) goes with the command's calls; its own span with it.
    with _tracing.command(lambda line: click.echo(f"rpcctl: warning: {line}", err=True)):
        cli.main(args=args, prog_name=prog, complete_var=COMPLETE_VAR, **extra)
