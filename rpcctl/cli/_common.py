"""The CLI's shared plumbing: settings, options, JSON output, errors to exit codes."""

from __future__ import annotations

import importlib
import json
import shlex
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from app_agent import wire
from rpcctl._settings import (
    FILE,
    FLAG,
    GLOBAL_OPTIONS,
    POSITIVE_SECONDS,
    SECONDS,
    TEXT,
    Option,
    Settings,
)
from rpcctl.exceptions import BadExpression, RpcctlError, TaskFailed

if TYPE_CHECKING:
    from rpcctl.expr import Call


F = TypeVar("F", bound=Callable[..., Any])


pass_settings = click.make_pass_decorator(Settings, ensure=True)


INTERRUPTED = wire.errors.INTERRUPTED

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: dict[str, str] = {}
        """Command name -> the module that defines it, imported only when that command runs (or
        help lists them all): `rpcctl ping` of a fleet should not pay for the profiler's SVG."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            # The global options after the command's name too (`rpcctl ping -n NODE`), as
            # --json already is; hidden, so each command's help shows its own options. An
            # option of the command's own by the same name wins (history --identity filters;
            # the caller's identity then goes before the command).
            own = {flag for param in cmd.params for flag in param.opts}
            global_options(late=True, skip=own)(cmd)
        super().add_command(cmd, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name])  # its commands register on the group
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None:
            from rpcctl import _tracing

            _tracing.name_command(name)  # the command's span, when it exports one
        return name, command, rest

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
        error = exc.to_dict(message)
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


def _apply_late(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command's name: into the settings, after the group's."""
    if param.name is not None:
        ctx.ensure_object(Settings).apply(param.name, value)


class Seconds(click.FloatRange):
    """click's FloatRange for a seconds option, with the option's own check on top (what
    the ping fast path checks too): no NaN, no infinity unless the option is endless."""

    def __init__(self, option: Option) -> None:
        super().__init__(min=0, min_open=option.kind == POSITIVE_SECONDS, max=option.maximum)
        self.option = option

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        problem = self.option.problem(seconds)
        if problem is not None:
            self.fail(f"{value!r} {problem}.", param, ctx)
        return seconds


def click_option(option: Option, **extra: Any) -> Callable[[F], F]:
    """The click option *option* declares (rpcctl._settings), with *extra* click settings."""
    by_kind: dict[str, dict[str, Any]] = {
        TEXT: {},
        FILE: {"type": click.Path(dir_okay=False)},
        FLAG: {"is_flag": True},
        SECONDS: {"type": Seconds(option)},
        POSITIVE_SECONDS: {"type": Seconds(option)},
    }
    kind = by_kind[option.kind]
    if option.default is not None:
        kind.update(default=option.default, show_default=True)
    return click.option(
        *option.flags,
        option.dest,
        metavar=option.metavar or None,
        multiple=option.multiple,
        help=option.help,
        **kind,
        **extra,
    )


def options(declared: Iterable[Option]) -> Callable[[F], F]:
    """Every option of *declared*, in its order (as --help lists them)."""

    def decorate(f: F) -> F:
        for option in reversed(tuple(declared)):
            f = click_option(option)(f)
        return f

    return decorate


def global_options(late: bool = False, skip: Iterable[str] = ()) -> Callable[[F], F]:
    """The group's options (GLOBAL_OPTIONS); *late*: the hidden copies every command takes,
    which go straight into the settings (but those with a flag in *skip*)."""
    skip = frozenset(skip)

    def decorate(f: F) -> F:
        for option in reversed(GLOBAL_OPTIONS):
            if skip.intersection(option.flags):
                continue
            late_only: dict[str, Any] = (
                {"hidden": True, "expose_value": False, "callback": _apply_late} if late else {}
            )
            f = click_option(option, **late_only)(f)
        return f

    return decorate


def timeout_option(default: float | None, help: str) -> Callable[[F], F]:
    """--timeout SECONDS; without a default (no limit), "inf" says the same."""
    return click_option(
        Option(
            ("--timeout",),
            "timeout",
            "SECONDS",
            help,
            POSITIVE_SECONDS,
            default,
            endless=default is None,
        )
    )


lock_wait_option = click_option(
    Option(
        ("--lock-wait",),
        "lock_wait",
        "SECONDS",
        "If the task's lock is held, wait up to SECONDS for it (default: fail at once, exit 7).",
        kind=SECONDS,
        default=0.0,
    )
)
"""``rpc`` and ``eval``: how long a task's held lock is waited for."""


def task_expression(
    settings: Settings, command: str, words: tuple[str, ...], lock_wait: float
) -> Call:
    """EXPR of ``rpc`` and ``eval``: one shell word (several: a usage error showing it
    quoted), parsed; a busy lock's message suggests --lock-wait when it was not given."""
    from rpcctl import expr  # here: the other commands need no expression parser (ast)

    if len(words) > 1:
        meant = shlex.quote(expr.suggest(words))
        msg = f"EXPR is one shell word; quote it: {settings.prog} {command} {meant}"
        raise BadExpression(msg)
    settings.hint_lock_wait = lock_wait == 0
    return expr.parse(words[0])


def _set_where(ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> None:
    if value:
        from rpcctl._where import Where

        Where.parse(value)  # a bad filter is a usage error before anything connects
        ctx.ensure_object(Settings).where = list(value)


def fleet_options(f: F) -> F:
    f = click.option(
        "--where",
        metavar="KEY=VALUE",
        multiple=True,
        expose_value=False,
        callback=_set_where,
        help="Fleets: only the nodes whose agent reports KEY=VALUE (version, app, ready, or "
        "any key at the top of `info`); repeat to require several.",
    )(f)
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


def render(result: Any) -> None:
    """Human output: strings as they are, None as nothing, everything else as JSON."""
    if result is None:
        return
    if isinstance(result, str):
        click.echo(result)
    else:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
