"""Release tasks: run them inside the live app with ``rpcctl rpc myapp.tasks.NAME``.

The migration tasks come ready-made from ``app_agent.contrib.alembic``: ``migrate``
(Alembic's upgrade), ``rollback`` (downgrade by steps), ``current`` and ``history``. They
hold the ``migrations`` lock and stream Alembic's own output to the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.config import Config

from app_agent import progress, task
from app_agent.contrib import alembic as alembic_tasks
from myapp import db

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


alembic_tasks.register(
    __name__,
    config=alembic_config,
    engine=db.engine,
    names={"upgrade": "migrate", "downgrade": "rollback"},
    aliases=True,
)


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
        for done, row in enumerate(samples, 1):
            connection.execute(db.notes.insert(), row)
            progress(done, len(samples), row["title"])
    print(f"seeded {len(samples)} notes")
    return len(samples)


@task(name="status")
def status() -> dict[str, Any]:
    """Where the app serves HTTP, its database and schema revision, and how many notes."""
    from myapp import web

    revision = alembic_tasks.AlembicTasks(alembic_config, db.engine).current_revision()
    notes: int | None = None
    if revision is not None:
        with db.engine().connect() as connection:
            notes = connection.execute(
                sa.select(sa.func.count()).select_from(db.notes)
            ).scalar_one()
    return {"http": web.url(), "database": db.redacted_url(), "revision": revision, "notes": notes}
