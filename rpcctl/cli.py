"""The click CLI: parse options, call the client, render results, map errors to exit codes.

Results go to stdout; diagnostics go to stderr. Every failure is an RpcctlError whose
``exit_code`` is the documented one (see the README's table).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from app_agent import __version__
from app_agent.wire import Address
from rpcctl import client as client_mod
from rpcctl import expr
from rpcctl import fleet as fleet_mod
from rpcctl._render import EventPrinter
from rpcctl._settings import PROG_ENV, Settings
from rpcctl._transport import Security
from rpcctl.exceptions import BadExpression, ConfigError, RpcctlError, TaskFailed

if TYPE_CHECKING:
    from click.shell_completion import CompletionItem

F = TypeVar("F", bound=Callable[..., Any])


pass_settings = click.make_pass_decorator(Settings, ensure=True)


INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

COMPLETION_TIMEOUT = 1.0
"""Seconds a shell completion may spend asking the app for its task names."""

_ARGV = "rpcctl.argv"


class Interrupted(Exception):
    """Ctrl-C while starting or following a job, which goes on in the app."""

    def __init__(self, job: str | None) -> None:
        super().__init__(job)
        self.job = job  # None: interrupted before the agent named the job


class RpcctlGroup(click.Group):
    """Turns RpcctlError into one clear line on stderr and its exit code, Ctrl-C into 130,
    and, with --json anywhere on the line, a usage error into a JSON envelope too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta.setdefault(_ARGV, list(args))
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_json(ctx, exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RpcctlError as exc:
            settings = ctx.find_object(Settings) or Settings()
            report_error(exc, settings)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            _usage_json(ctx, exc)
            raise
        except (KeyboardInterrupt, Interrupted) as exc:
            settings = ctx.find_object(Settings) or Settings()
            report_interrupt(settings, exc if isinstance(exc, Interrupted) else None)
            ctx.exit(INTERRUPTED)


def _wants_json(ctx: click.Context) -> bool:
    argv = ctx.meta.get(_ARGV, [])
    words = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in words


def _usage_json(ctx: click.Context, exc: click.UsageError) -> None:
    """The JSON envelope of a usage error on stdout (click writes its usage text to stderr)."""
    if _wants_json(ctx) and not ctx.resilient_parsing:
        error = {"kind": "usage", "message": exc.format_message(), "exit_code": exc.exit_code}
        emit_json({"ok": False, "error": error})


def report_error(exc: RpcctlError, settings: Settings) -> None:
    if isinstance(exc, TaskFailed) and exc.remote_traceback:
        click.echo(exc.remote_traceback.rstrip("\n"), err=True)
    message = settings.explain(exc)
    click.echo(f"rpcctl: error: {message}", err=True)
    if settings.json:
        error: dict[str, Any] = {
            "kind": str(exc.kind),
            "message": message,
            "exit_code": exc.exit_code,
        }
        if isinstance(exc, TaskFailed):
            error["type"] = exc.type
            error["traceback"] = exc.remote_traceback
        emit_json({"ok": False, "error": error})


def report_interrupt(settings: Settings, during: Interrupted | None) -> None:
    """Ctrl-C: say what goes on in the app, and how to reach it again."""
    if sys.stderr.isatty():
        click.echo(err=True)  # past the terminal's ^C
    prog = settings.prog
    job = during.job if during else None
    if job is not None:
        message = (
            f"interrupted; job {job} goes on running in the app: follow it with "
            f"`{prog} logs {job} -f`, or stop it with `{prog} cancel {job}`"
        )
    elif during is not None:
        message = f"interrupted while the job was starting; `{prog} jobs` lists it if it did"
    else:
        message = "interrupted"
    click.echo(f"rpcctl: {message}", err=True)
    if settings.json:
        error: dict[str, Any] = {
            "kind": "interrupted",
            "message": message,
            "exit_code": INTERRUPTED,
        }
        if job is not None:
            error["job"] = job
        emit_json({"ok": False, "error": error})


def emit_json(document: dict[str, Any]) -> None:
    click.echo(json.dumps(document, ensure_ascii=False))


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.ensure_object(Settings).json = True
    return value


def json_option(f: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        expose_value=False,
        callback=_set_json,
        is_eager=True,
        help="Print one JSON document: {ok, result} or {ok, error}.",
    )(f)


def timeout_option(default: float | None, help: str) -> Callable[[F], F]:
    return click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=default,
        show_default=default is not None,
        metavar="SECONDS",
        help=help,
    )


def fleet_options(f: F) -> F:
    f = click.option(
        "--min-ok",
        type=click.IntRange(min=0),
        metavar="N",
        help="Fleets: exit 0 when at least N nodes succeed (default: all).",
    )(f)
    return click.option(
        "--parallel",
        type=click.IntRange(min=1),
        default=32,
        show_default=True,
        metavar="N",
        help="Fleets: at most N nodes at once.",
    )(f)


Cells = Callable[[Any], list[str]]


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
            "exit_code": code,
        }
        click.echo(json.dumps(summary))
        raise click.exceptions.Exit(code)
    cells = cells or (lambda result: [_one_line(result)])
    head = ["NODE", "OUTCOME", "TIME", *columns]
    rows = []
    for o in outcome.outcomes:
        took = f"{o.duration * 1000:.0f} ms"
        if o.error is None:
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


def _one_line(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _info_cells(details: Any) -> list[str]:
    details = details if isinstance(details, dict) else {}
    ready = details.get("ready")
    return [
        str(details.get("app", "")),
        str(details.get("pid", "")),
        _duration(details.get("uptime_s")),
        "" if ready is None else "yes" if ready else "no",
        str(len(details.get("jobs") or [])),
        str((details.get("versions") or {}).get("rpcctl", "")),
    ]


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.1f}s"


def _tasks_cells(found: Any) -> list[str]:
    return [str(len(found)) if isinstance(found, list) else ""]


def _tasks_details(outcome: fleet_mod.MulticallResult) -> list[str]:
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


def apply_globals(settings: Settings, params: dict[str, Any]) -> None:
    """The group's options into *settings*; options not given keep what *settings* has."""
    nodes = list(params.get("nodes") or ())
    if nodes:
        settings.nodes = nodes
        settings.node = nodes[0]
    for name in ("nodes_file", "discover", "config_path", "cookie_file"):
        if params.get(name):
            setattr(settings, name, params[name])
    for key in ("ca", "cert", "key"):
        if params.get(f"tls_{key}"):
            settings.tls[key] = params[f"tls_{key}"]


@cli.command()
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Keep trying (with backoff) until the agent answers or SECONDS pass "
    "(fleets: every node, in parallel, within the same SECONDS).",
)
@click.option(
    "--ready",
    is_flag=True,
    help="Also require the app to be ready (app_agent.set_ready); exit 3 while it is not.",
)
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Seconds to wait for one answer (per node).")
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
        )
        run_fleet(settings, result, min_ok)
    address = settings.address()
    security = settings.security()
    if wait is not None:
        waited = client_mod.wait_for(address, wait, security, ready=ready)
    else:
        client_mod.ping(address, timeout, security, ready=ready)
        waited = 0.0
    if settings.json:
        emit_json({"ok": True, "result": "pong", "node": str(address), "waited_s": waited})
    else:
        click.echo("pong")


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
@click.option(
    "--lock-wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="If the task's lock is held, wait up to SECONDS for it (default: fail at once, exit 7).",
)
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
    if len(words) > 1:
        meant = shlex.quote(expr.suggest(words))
        msg = f"EXPR is one shell word; quote it: {settings.prog} rpc {meant}"
        raise BadExpression(msg)
    call = expr.parse(words[0])
    settings.hint_lock_wait = lock_wait == 0
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
            **call.kwargs,
        )
        run_fleet(settings, result, min_ok)
    if settings.is_fleet:
        chosen = fleet_mod.first_answering(
            settings.fleet(), timeout=client_mod.DEFAULT_TIMEOUT, security=settings.security()
        )
        click.echo(f"running on {chosen}", err=True)
        settings.node = str(chosen)
        settings.nodes = [settings.node]
        settings.nodes_file = settings.discover = None
    with settings.connect() as conn:
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


def _fan_out(
    settings: Settings, method: str, timeout: float, parallel: int
) -> fleet_mod.MulticallResult:
    def action(address: Address, deadline: float, security: Security) -> Any:
        import time

        with client_mod.Client(address, max(deadline - time.monotonic(), 0.01), security) as c:
            return getattr(c, method)()

    return fleet_mod.fan_out(
        settings.fleet(), action, timeout=timeout, parallel=parallel, security=settings.security()
    )


def render(result: Any) -> None:
    """Human output: strings as they are, None as nothing, everything else as JSON."""
    if result is None:
        return
    if isinstance(result, str):
        click.echo(result)
    else:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))


@cli.command()
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Fleets: seconds per node.")
@fleet_options
@json_option
@pass_settings
def tasks(settings: Settings, timeout: float, parallel: int, min_ok: int | None) -> None:
    """List the registered tasks with their signatures and first docstring lines."""
    if settings.is_fleet:
        run_fleet(
            settings,
            _fan_out(settings, "tasks", timeout, parallel),
            min_ok,
            columns=["TASKS"],
            cells=_tasks_cells,
            details=_tasks_details,
        )
    with settings.connect() as conn:
        found = conn.tasks()
    if settings.json:
        emit_json({"ok": True, "result": found})
        return
    if not found:
        click.echo("no tasks registered", err=True)
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
@timeout_option(client_mod.DEFAULT_TIMEOUT, "Fleets: seconds per node.")
@fleet_options
@json_option
@pass_settings
def info(settings: Settings, timeout: float, parallel: int, min_ok: int | None) -> None:
    """Show the app's pid, uptime, versions, node and running jobs."""
    if settings.is_fleet:
        run_fleet(
            settings,
            _fan_out(settings, "info", timeout, parallel),
            min_ok,
            columns=["APP", "PID", "UPTIME", "READY", "JOBS", "RPCCTL"],
            cells=_info_cells,
        )
    with settings.connect() as conn:
        details = conn.info()
    if settings.json:
        emit_json({"ok": True, "result": details})
        return
    versions = details.get("versions", {})
    click.echo(f"app:      {details.get('app')}")
    click.echo(f"pid:      {details.get('pid')}")
    click.echo(f"node:     {details.get('node')}")
    click.echo(f"uptime:   {details.get('uptime_s')}s")
    click.echo("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    jobs = details.get("jobs", [])
    click.echo(f"jobs:     {len(jobs)} running")
    for job in jobs:
        click.echo(f"  {job['id']}  {job['task']}  {job['duration_s']}s  {job['caller']}")


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
    client_mod.wait_gone(address, app_pid, timeout, settings.security())
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
    new_pid = client_mod.wait_restarted(address, old_pid, timeout, settings.security())
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
    from rpcctl.runner import Runner

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
    from pathlib import Path

    from rpcctl import scaffold

    written = scaffold.init(name, Path.cwd(), force=force, module=module)
    if settings.json:
        emit_json({"ok": True, "result": {"files": [str(p) for p in written]}})
        return
    for path in written:
        click.echo(f"wrote {path}")


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


COMPLETE_VAR = "_RPCCTL_COMPLETE"

# stack, stats, health, profile, log-level: registered on `cli` by importing their module.
import rpcctl._cli_introspect  # noqa: E402, F401


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
    cli.main(args=args, prog_name="rpcctl", complete_var=COMPLETE_VAR, **extra)
