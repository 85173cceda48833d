"""Ready-made Alembic release tasks: upgrade, downgrade, current and history.

    # myapp/tasks.py
    from app_agent.contrib import alembic as alembic_tasks

    alembic_tasks.register(
        __name__,                       # the tasks become myapp.tasks.migrate, ...
        config=make_alembic_config,     # returns an alembic.config.Config
        engine=db.engine,               # returns the app's SQLAlchemy Engine
        names={"upgrade": "migrate", "downgrade": "rollback"},
    )

Each task holds the ``migrations`` lock (so two callers, or with a file or PostgreSQL lock
backend two replicas, never migrate at once) and streams Alembic's own log lines to the
caller while it runs. The migrations run on a connection from *engine*, handed to the
environment as ``config.attributes["connection"]`` (the pattern Alembic documents for
sharing a connection); an ``env.py`` that ignores it opens its own.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from app_agent._registry import Task, registry
from app_agent.wire.words import plural

if TYPE_CHECKING:
    import sqlalchemy
    from alembic.config import Config
    from alembic.script import ScriptDirectory

DEFAULT_NAMES = {
    "upgrade": "upgrade",
    "downgrade": "downgrade",
    "current": "current",
    "history": "history",
}


class AlembicTasks:
    """The four tasks, bound to one Alembic configuration and engine."""

    def __init__(
        self, config: Callable[[], Config], engine: Callable[[], sqlalchemy.Engine]
    ) -> None:
        self.config = config
        self.engine = engine

    def script(self) -> ScriptDirectory:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.config())

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine().connect() as connection:
            revision: str | None = MigrationContext.configure(connection).get_current_revision()
            return revision

    def describe(self, revision: str) -> str:
        found = self.script().get_revision(revision)
        return f"{found.revision}: {found.doc}" if found is not None else revision

    def path(self, newer: str | None, older: str | None) -> list[str]:
        """The revisions after *older* up to *newer*, oldest first."""
        if newer == older:
            return []
        walked = self.script().iterate_revisions(newer or "base", older or "base")
        return [f"{r.revision}: {r.doc}" for r in reversed(list(walked)) if r.revision != older]

    def run(self, action: str, target: str) -> None:
        from alembic import command

        config = self.config()
        with _alembic_logs(), self.engine().begin() as connection:
            config.attributes["connection"] = connection
            getattr(command, action)(config, target)

    # -- the tasks ---------------------------------------------------------------------------

    def upgrade(self, revision: str = "head") -> list[str]:
        """Apply Alembic migrations up to REVISION; returns the revisions applied."""
        before = self.current_revision()
        self.run("upgrade", revision)
        return self.path(self.current_revision(), before)

    def downgrade(self, steps: int = 1) -> list[str]:
        """Undo the last STEPS migrations; returns the revisions undone, newest first."""
        if steps < 1:
            msg = f"steps must be at least 1, got {steps}"
            raise ValueError(msg)
        before = self.current_revision()
        if before is None:
            return []
        applied = len(self.path(before, None))
        if steps > applied:
            are = "is" if applied == 1 else "are"
            msg = f"cannot roll back {plural(steps, 'migration')}: only {applied} {are} applied"
            raise ValueError(msg)
        self.run("downgrade", f"-{steps}")
        return list(reversed(self.path(before, self.current_revision())))

    def current(self) -> dict[str, Any]:
        """The database's schema revision and whether it is the head."""
        revision = self.current_revision()
        head = self.script().get_current_head()
        return {
            "revision": revision,
            "description": self.describe(revision) if revision else None,
            "head": head,
            "up_to_date": revision == head,
        }

    def history(self) -> list[str]:
        """Every migration, newest first, marking the head and the database's revision."""
        current = self.current_revision()
        lines = []
        for script in self.script().walk_revisions():
            marks = [
                m
                for m, on in (("head", script.is_head), ("current", script.revision == current))
                if on
            ]
            suffix = f" ({', '.join(marks)})" if marks else ""
            lines.append(f"{script.revision}: {script.doc}{suffix}")
        return lines


@contextlib.contextmanager
def _alembic_logs() -> Iterator[None]:
    """Let Alembic's INFO lines ("Running upgrade 0001 -> 0002") through while it runs, so
    they reach the caller; the logger's own level comes back afterwards."""
    logger = logging.getLogger("alembic")
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(previous)


def register(
    module: str,
    config: Callable[[], Config],
    engine: Callable[[], sqlalchemy.Engine],
    *,
    lock: str | None = "migrations",
    names: Mapping[str, str] | None = None,
    aliases: bool = False,
) -> dict[str, Task]:
    """Register the Alembic tasks as *module*.NAME (see the module docstring).

    *names* renames tasks (``{"upgrade": "migrate"}``); leave a task out by mapping it to
    ``""``. With *aliases*, each task is also callable by its bare NAME. upgrade and
    downgrade hold *lock*; current and history take no lock.
    """
    tasks = AlembicTasks(config, engine)
    chosen = {**DEFAULT_NAMES, **(names or {})}
    registered: dict[str, Task] = {}
    for action, name in chosen.items():
        if name:
            func = _as_task(getattr(tasks, action), module, name)
            task_lock = lock if action in ("upgrade", "downgrade") else None
            alias = name if aliases else None
            registered[action] = registry.add(func, alias=alias, lock=task_lock)
    return registered


def _as_task(method: Callable[..., Any], module: str, name: str) -> Callable[..., Any]:
    """A module-level-looking function *module.name* that calls *method*."""

    def task(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    task.__module__ = module
    task.__name__ = task.__qualname__ = name
    task.__doc__ = method.__doc__
    # The method's own parameters (without self), with real annotations.
    task.__signature__ = inspect.signature(method, eval_str=True)  # type: ignore[attr-defined]
    return task
