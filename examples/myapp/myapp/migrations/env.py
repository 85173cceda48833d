"""Alembic environment: uses the connection the app hands over, or DATABASE_URL."""

from __future__ import annotations

from alembic import context

from myapp import db

config = context.config
target_metadata = db.metadata


def run_offline() -> None:
    context.configure(url=db.database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    with db.engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
