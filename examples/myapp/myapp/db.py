"""The database: URL, engine, and the tables as the head migration leaves them."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import sqlalchemy as sa

metadata = sa.MetaData()

notes = sa.Table(
    "notes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.Text, nullable=False, server_default=""),
    sa.Column("tags", sa.String(200), nullable=False, server_default=""),
    sa.Column(
        "created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()
    ),
)


def database_url() -> str:
    """DATABASE_URL, or a SQLite file under ./var of the working directory."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    var = Path.cwd() / "var"
    var.mkdir(exist_ok=True)
    return f"sqlite:///{var / 'myapp.db'}"


@functools.cache
def engine() -> sa.Engine:
    return sa.create_engine(database_url())


def redacted_url() -> str:
    return engine().url.render_as_string(hide_password=True)
