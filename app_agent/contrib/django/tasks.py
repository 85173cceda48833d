"""The Django release tasks: ``django.migrate``, ``django.showmigrations``, ``django.check``
and ``django.call_command``.

Each task closes the database connections it opened when it ends: Django keeps one
connection per thread, and the agent's threads outlive their jobs. Django's output goes to
whatever ``sys.stdout``/``sys.stderr`` are at each write, so the agent streams it to the
caller line by line while the command runs.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

from app_agent._registry import Task, registry
from app_agent.contrib.django import _settings, checks
from app_agent.wire import environment

MODULE = "django"
"""The tasks' module part: they are called as ``django.migrate`` and so on."""
LOCK = "migrations"


class _Current:
    """A stream that writes to whatever ``sys.<name>`` is at each write."""

    def __init__(self, name: str) -> None:
        self._name = name

    def write(self, text: str) -> int:
        written: int = getattr(sys, self._name).write(text)
        return written

    def flush(self) -> None:
        getattr(sys, self._name).flush()

    def isatty(self) -> bool:
        return bool(getattr(sys, self._name).isatty())


def _streams() -> dict[str, Any]:
    return {"stdout": _Current("stdout"), "stderr": _Current("stderr")}


def _applied(connection: Any) -> list[tuple[str, str]]:
    """The migrations recorded as applied, in the order they were applied."""
    from django.db.migrations.recorder import MigrationRecorder

    recorder = MigrationRecorder(connection)
    if not recorder.has_table():
        return []
    return list(recorder.migration_qs.order_by("id").values_list("app", "name"))


def migrate(
    app_label: str | None = None, migration_name: str | None = None, **options: Any
) -> list[str]:
    """Apply migrations (of APP_LABEL, up to MIGRATION_NAME); returns those applied."""
    from django.core.management import call_command
    from django.db import DEFAULT_DB_ALIAS, connections

    if migration_name is not None and app_label is None:
        msg = "migration_name needs app_label, as in: django.migrate('polls', '0002_x')"
        raise ValueError(msg)
    connection = connections[options.get("database", DEFAULT_DB_ALIAS)]
    before = set(_applied(connection))
    positional = [a for a in (app_label, migration_name) if a is not None]
    call_command("migrate", *positional, **{**options, **_streams(), "interactive": False})
    return [f"{app}.{name}" for app, name in _applied(connection) if (app, name) not in before]


def showmigrations(database: str = "default") -> dict[str, dict[str, list[str]]]:
    """Each app's migrations, applied and pending, in order."""
    from django.db import connections
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(connections[database], ignore_no_migrations=True)
    result: dict[str, dict[str, list[str]]] = {}
    for label in sorted(loader.migrated_apps):
        ordered: list[tuple[str, str]] = []
        for leaf in loader.graph.leaf_nodes(label):
            for node in loader.graph.forwards_plan(leaf):
                if node[0] == label and node not in ordered:
                    ordered.append(node)
        applied = [name for app, name in ordered if (app, name) in loader.applied_migrations]
        pending = [name for _, name in ordered if name not in applied]
        result[label] = {"applied": applied, "pending": pending}
    return result


def check(deploy: bool = False) -> list[dict[str, Any]]:
    """Run Django's system checks (DEPLOY: the deployment ones too); raises on errors."""
    return [checks.describe(m) for m in checks.run(deploy)]


def call_command(name: str, *args: Any, **options: Any) -> None:
    """Run the management command NAME, one of RPCCTL_DJANGO_COMMANDS; it never prompts."""
    from django.core import management
    from django.core.management.base import BaseCommand

    app = management.get_commands().get(name)
    if app is None:
        msg = f"unknown management command {name!r}"
        raise management.CommandError(msg)
    command = app if isinstance(app, BaseCommand) else management.load_command_class(app, name)
    # argparse keeps its actions private; Django's own call_command reads them the same way.
    dests = {action.dest for action in command.create_parser("", name)._actions}
    forced = {"interactive": False} if "interactive" in dests else {}
    management.call_command(command, *args, **{**options, **_streams(), **forced})


def _check_allowed(name: object) -> None:
    """Refuse a command outside RPCCTL_DJANGO_COMMANDS (TypeError: the agent's usage error)."""
    if not isinstance(name, str):
        msg = f"name must be a management command's name, got {name!r}"
        raise TypeError(msg)
    allowed = _settings.commands()
    if name not in allowed:
        msg = (
            f"the management command {name!r} is not allowed remotely; "
            f"{environment.DJANGO_COMMANDS} allows: {', '.join(allowed) or 'none'}"
        )
        raise TypeError(msg)
    if name == "migrate":
        msg = "run migrate as django.migrate(app_label, migration_name), which holds the lock"
        raise TypeError(msg)


class _AllowListedSignature(inspect.Signature):
    """call_command's signature, refusing a command outside the allow-list when arguments
    are bound: the agent binds them before a job starts, and a TypeError there is a usage
    error (exit 2) that names the setting."""

    __slots__ = ()

    def bind(self, /, *args: Any, **kwargs: Any) -> inspect.BoundArguments:
        bound = super().bind(*args, **kwargs)
        _check_allowed(bound.arguments["name"])
        return bound


def _as_task(
    func: Callable[..., Any], name: str, signature: type[inspect.Signature] = inspect.Signature
) -> Callable[..., Any]:
    """*func* as the task ``django.<name>``, closing this thread's connections at its end."""

    def task(*args: Any, **kwargs: Any) -> Any:
        from django.db import connections

        try:
            return func(*args, **kwargs)
        finally:
            connections.close_all()

    task.__module__ = MODULE
    task.__name__ = task.__qualname__ = name
    task.__doc__ = func.__doc__
    own = inspect.signature(func, eval_str=True)
    task.__signature__ = signature(  # type: ignore[attr-defined]
        list(own.parameters.values()), return_annotation=own.return_annotation
    )
    return task


def register() -> dict[str, Task]:
    """Register the tasks; migrate, showmigrations and check only where
    RPCCTL_DJANGO_COMMANDS allows them. migrate holds the migrations lock."""
    allowed = _settings.commands()
    registered: dict[str, Task] = {}
    for func, lock in ((migrate, LOCK), (showmigrations, None), (check, None)):
        if func.__name__ in allowed:
            registered[func.__name__] = registry.add(_as_task(func, func.__name__), lock=lock)
    task = _as_task(call_command, "call_command", _AllowListedSignature)
    registered["call_command"] = registry.add(task)
    return registered
