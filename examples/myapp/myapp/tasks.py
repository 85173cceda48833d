"""Release tasks: run them inside the live app with ``rpcctl rpc myapp.tasks.NAME``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app_agent import task
from myapp import db

MIGRATIONS = Path(__file__).parent / "migrations"

# Two operators running migrate at once in the same process take turns.
_migrations_lock = threading.Lock()


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def _current_revision() -> str | None:
    with db.engine().connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _describe(revision: str) -> str:
    script = _script().get_revision(revision)
    return f"{script.revision}: {script.doc}" if script is not None else revision


def _path(newer: str | None, older: str | None) -> list[str]:
    """The revisions after *older* up to *newer*, oldest first."""
    if newer == older:
        return []
    walked = _script().iterate_revisions(newer or "base", older or "base")
    return [f"{r.revision}: {r.doc}" for r in reversed(list(walked)) if r.revision != older]


def _run(action: str, target: str) -> None:
    config = _config()
    with db.engine().begin() as connection:
        config.attributes["connection"] = connection
        getattr(command, action)(config, target)


@task(name="migrate")
def migrate(revision: str = "head") -> list[str]:
    """Apply Alembic migrations up to REVISION; returns the revisions applied."""
    with _migrations_lock:
        before = _current_revision()
        _run("upgrade", revision)
        after = _current_revision()
    return _path(after, before)


@task(name="rollback")
def rollback(steps: int = 1) -> list[str]:
    """Undo the last STEPS migrations; returns the revisions undone, newest first."""
    if steps < 1:
        msg = f"steps must be at least 1, got {steps}"
        raise ValueError(msg)
    with _migrations_lock:
        before = _current_revision()
        if before is None:
            return []
        applied = len(_path(before, None))
        if steps > applied:
            msg = f"cannot roll back {steps} migrations: only {applied} are applied"
            raise ValueError(msg)
        _run("downgrade", f"-{steps}")
        after = _current_revision()
    return list(reversed(_path(before, after)))


@task(name="current")
def current() -> dict[str, Any]:
    """The database's schema revision and whether it is the head."""
    revision = _current_revision()
    head = _script().get_current_head()
    return {
        "revision": revision,
        "description": _describe(revision) if revision else None,
        "head": head,
        "up_to_date": revision == head,
    }


@task(name="seed")
def seed() -> int:
    """Insert sample notes into an empty notes table; returns how many were added."""
    samples = [
        {"title": "Deployed with rpcctl", "body": "migrations ran inside the app", "tags": "ops"},
        {"title": "Erlang did it first", "body": "bin/app rpc Mod.fun", "tags": "history"},
    ]
    with db.engine().begin() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(db.notes)).scalar_one()
        if count:
            return 0
        connection.execute(db.notes.insert(), samples)
    return len(samples)


@task(name="status")
def status() -> dict[str, Any]:
    """Where the app serves HTTP, its database and schema revision, and how many notes."""
    from myapp import web

    revision = _current_revision()
    notes: int | None = None
    if revision is not None:
        with db.engine().connect() as connection:
            notes = connection.execute(
                sa.select(sa.func.count()).select_from(db.notes)
            ).scalar_one()
    return {"http": web.url(), "database": db.redacted_url(), "revision": revision, "notes": notes}
