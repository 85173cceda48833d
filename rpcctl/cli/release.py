"""The release's lifecycle: `start`, `stop`, `restart`, `pid`, `release init`, `cookie`."""

from __future__ import annotations

import os
import sys

import click

from app_agent.wire import processes
from rpcctl import waits
from rpcctl._settings import PROG_ENV, Settings
from rpcctl.cli._common import (
    emit_json,
    json_option,
    pass_settings,
    timeout_option,
)
from rpcctl.cli._group import cli
from rpcctl.exceptions import ConfigError


@cli.command()
@json_option
@pass_settings
def pid(settings: Settings) -> None:
    """Print the app's pid."""
    settings.single("pid")
    with settings.connect() as conn:
        app_pid = conn.info()["pid"]
    if settings.json:
        emit_json({"ok": True, "result": app_pid})
    else:
        click.echo(app_pid)


@cli.command()
@timeout_option(30.0, "Seconds to wait for the app to be gone (exit 4 after).")
@json_option
@pass_settings
def stop(settings: Settings, timeout: float) -> None:
    """Stop the app gracefully through its agent and wait until it is gone.

    Under `rpcctl start` the runner stops it (pre_stop hooks, SIGTERM, post_stop hooks);
    otherwise the app's stop handler runs, or it gets SIGTERM. Exit 3 if it is not running.
    """
    settings.single("stop")
    with settings.connect() as conn:
        app_pid = int(conn.info()["pid"])
        how = conn.stop()["via"]
    address = conn.address
    waits.wait_gone(address, app_pid, timeout, settings.security())
    if address.is_unix:
        # An app that dies on SIGTERM leaves its socket behind; gone with it, so the next
        # command says plainly that nothing runs (the runner does the same on its side).
        processes.remove_stale_socket(address.path)
    if settings.json:
        emit_json({"ok": True, "result": {"pid": app_pid, "via": how}})
    else:
        click.echo(f"stopped {address} (pid {app_pid})")


@cli.command()
@timeout_option(60.0, "Seconds to wait for the new app process to answer (exit 4 after).")
@json_option
@pass_settings
def restart(settings: Settings, timeout: float) -> None:
    """Restart an app that runs under `rpcctl start`: stop hooks, stop, start, start hooks."""
    settings.single("restart")
    with settings.connect() as conn:
        old_pid = int(conn.info()["pid"])
        conn.stop(restart=True)
    address = conn.address
    new_pid = waits.wait_restarted(address, old_pid, timeout, settings.security())
    if settings.json:
        emit_json({"ok": True, "result": {"old_pid": old_pid, "pid": new_pid}})
    else:
        click.echo(f"restarted {address} (pid {old_pid} -> {new_pid})")


@cli.command()
@pass_settings
def start(settings: Settings) -> None:
    """Run the release in the foreground: hooks, the app, supervision.

    pre_start hooks, then the app's command with RPCCTL_NODE set, then (once its agent
    answers ping) post_start hooks. SIGTERM/SIGINT run pre_stop hooks, stop the app and run
    post_stop hooks. Exits 0 after a clean stop, with the app's status if it dies by itself,
    1 if a hook with the "stop" policy fails, 3 if the agent never answers, 4 if the app had
    to be killed.
    """
    settings.single("start")
    from app_agent.logs import configure_logging
    from app_agent.logs import get_logger as agent_logger
    from rpcctl.release.runner import Runner

    configure_logging()
    os.environ.pop(PROG_ENV, None)  # the launcher's name is not for the app or its hooks
    status = Runner(settings.config(), agent_logger()).run()
    sys.exit(status)


@cli.group()
def release() -> None:
    """Scaffold and manage an app's release layout."""


@release.command("init")
@click.argument("name")
@click.option("--module", help="The app's Python package (default: NAME).")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@json_option
@pass_settings
def release_init(settings: Settings, name: str, module: str | None, force: bool) -> None:
    """Write rpcctl.toml, bin/NAME and rel/hooks/*/ into the current directory."""
    import textwrap
    from pathlib import Path

    from rpcctl.release import scaffold

    written = scaffold.init(name, Path.cwd(), force=force, module=module)
    steps = scaffold.next_steps(name, Path.cwd(), module=module)
    if settings.json:
        files = [str(p) for p in written]
        emit_json({"ok": True, "result": {"files": files, "next_steps": steps}})
        return
    for path in written:
        click.echo(f"wrote {path}")
    click.echo("\nNext steps:")
    for number, step in enumerate(steps, 1):
        click.echo(
            textwrap.fill(step, 88, initial_indent=f"  {number}. ", subsequent_indent="     ")
        )


@cli.group()
def cookie() -> None:
    """Manage the shared secret that callers must prove."""


@cookie.command("generate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing file.")
@json_option
@pass_settings
def cookie_generate(settings: Settings, file: str, force: bool) -> None:
    """Write a new random cookie (256 bits) to FILE, readable by its owner only.

    The cookie is never printed. Point the agent and its callers at FILE with
    cookie_file in rpcctl.toml, --cookie-file, or RPCCTL_COOKIE_FILE.
    """
    from app_agent.wire.cookies import CookieError, generate_cookie_file

    try:
        generate_cookie_file(file, force=force)
    except CookieError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        msg = f"cannot write {file}: {exc.strerror}"
        raise ConfigError(msg) from None
    if settings.json:
        emit_json({"ok": True, "result": {"file": file, "mode": "0600"}})
    else:
        click.echo(f"wrote a new cookie to {file} (mode 0600)", err=True)
