"""The `rpcctl` group: its global options, and `main()`."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from app_agent import __version__
from rpcctl._settings import PROG_ENV, Settings

if TYPE_CHECKING:
    pass

from rpcctl.cli._common import RpcctlGroup, json_option, pass_settings


@click.group(cls=RpcctlGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--node",
    "-n",
    "nodes",
    metavar="NODE",
    multiple=True,
    help="Agent address: unix:PATH, tcp://HOST:PORT or tls://HOST:PORT; repeat for a fleet. "
    "Default: --config's node, else $RPCCTL_NODE, else rpcctl.toml found upward.",
)
@click.option(
    "--nodes-file",
    metavar="FILE",
    help="A fleet: one address a line, # comments (ping, rpc, info, tasks, stack, stats, "
    "health, profile, log-level).",
)
@click.option(
    "--discover",
    metavar="dns:NAME:PORT",
    help="A fleet: every A/AAAA record of NAME (a Kubernetes headless service).",
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="The release config (rpcctl.toml or pyproject.toml). Default: found upward from here.",
)
@click.option(
    "--cookie-file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Owner-only file holding the cookie. Default: --config's cookie_file, else "
    "$RPCCTL_COOKIE, else $RPCCTL_COOKIE_FILE, else the cookie_file of the rpcctl.toml found "
    "upward. Never pass the cookie itself on the command line.",
)
@click.option(
    "--identity",
    metavar="NAME",
    help="Who we are to an agent with an access file; the cookie (from the cookie options) "
    "is that identity's. Default: --config's identity, else $RPCCTL_IDENTITY, else the "
    "identity of the rpcctl.toml found upward.",
)
@click.option("--tls-ca", metavar="FILE", help="CA certificate(s) to verify a tls:// agent.")
@click.option("--tls-cert", metavar="FILE", help="Client certificate for mutual TLS.")
@click.option("--tls-key", metavar="FILE", help="Key of the client certificate.")
@click.version_option(__version__, "--version", prog_name="rpcctl")
@json_option
@pass_settings
def cli(settings: Settings, /, **params: Any) -> None:
    """Ping a running Python application and run release tasks inside it.

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
    "eval": "rpcctl.cli.eval",
    "remote": "rpcctl.cli.remote",
}


def apply_globals(settings: Settings, params: dict[str, Any]) -> None:
    """The group's options into *settings*; options not given keep what *settings* has."""
    nodes = list(params.get("nodes") or ())
    if nodes:
        settings.nodes = nodes
        settings.node = nodes[0]
    for name in ("nodes_file", "discover", "config_path", "cookie_file", "identity"):
        if params.get(name):
            setattr(settings, name, params[name])
    for key in ("ca", "cert", "key"):
        if params.get(f"tls_{key}"):
            settings.tls[key] = params[f"tls_{key}"]


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
    cli.main(args=args, prog_name=prog, complete_var=COMPLETE_VAR, **extra)
