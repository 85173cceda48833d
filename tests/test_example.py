"""The example app: real migrations through `rpcctl rpc`, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import AppProcess, start_myapp


def rpc_json(app: AppProcess, expression: str) -> object:
    """The result of an rpc --json (its last line; the lines before are the task's events)."""
    result = app.rpcctl("rpc", "--json", expression)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])["result"]


def http(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def check_the_seed_story(app: AppProcess, database_url: str) -> None:
    status = rpc_json(app, "myapp.tasks.status")
    assert isinstance(status, dict)
    base = str(status["http"])
    assert "notes" not in tables(database_url)
    code, body = http(f"{base}/notes")
    assert code == 503
    assert "myapp.tasks.migrate" in str(body["error"])

    migrated = app.rpcctl("rpc", "myapp.tasks.migrate")
    assert migrated.returncode == 0, migrated.stderr
    # Alembic's own output streams to the caller's stderr while the task runs.
    assert "Running upgrade  -> 0001, create the notes table" in migrated.stderr
    assert "Running upgrade 0001 -> 0002, add tags to notes" in migrated.stderr
    assert json.loads(migrated.stdout) == [
        "0001: create the notes table",
        "0002: add tags to notes",
    ]
    assert {"notes", "alembic_version"} <= tables(database_url)
    assert rpc_json(app, "myapp.tasks.current") == {
        "revision": "0002",
        "description": "0002: add tags to notes",
        "head": "0002",
        "up_to_date": True,
    }
    assert rpc_json(app, "myapp.tasks.migrate") == []  # a second migrate is a no-op
    listed = {t["name"]: t for t in json.loads(app.rpcctl("tasks", "--json").stdout)["result"]}
    assert listed["myapp.tasks.migrate"]["lock"] == "migrations"
    assert listed["myapp.tasks.rollback"]["lock"] == "migrations"
    assert listed["myapp.tasks.migrate"]["signature"] == (
        "myapp.tasks.migrate(revision: str = 'head') -> list[str]"
    )
    assert rpc_json(app, "myapp.tasks.history") == [
        "0002: add tags to notes (head, current)",
        "0001: create the notes table",
    ]

    assert rpc_json(app, "myapp.tasks.seed") == 2
    code, _created = http(f"{base}/notes", {"title": "from the test", "tags": "t"})
    assert code == 201
    code, listed = http(f"{base}/notes")
    assert code == 200
    assert [n["title"] for n in listed["notes"]][-1] == "from the test"  # type: ignore[index]

    assert rpc_json(app, "myapp.tasks.rollback(1)") == ["0002: add tags to notes"]
    assert rpc_json(app, "myapp.tasks.current")["revision"] == "0001"  # type: ignore[index]
    assert rpc_json(app, 'migrate("head")') == ["0002: add tags to notes"]

    bad = app.rpcctl("rpc", "myapp.tasks.rollback(99)")
    assert bad.returncode == 1
    assert "cannot roll back 99 migrations: only 2 are applied" in bad.stderr
    assert app.rpcctl("ping").stdout == "pong\n"
    assert http(f"{base}/health") == (200, {"status": "ok"})


def test_migrate_on_sqlite(short_tmp: Path) -> None:
    url = f"sqlite:///{short_tmp}/myapp.db"
    app = start_myapp(short_tmp, database_url=url)
    try:
        check_the_seed_story(app, url)
    finally:
        app.close()


def test_default_database_is_sqlite_under_var(short_tmp: Path) -> None:
    app = start_myapp(short_tmp)
    try:
        assert rpc_json(app, "migrate") != []
        assert (short_tmp / "var" / "myapp.db").exists()
    finally:
        app.close()


@pytest.mark.pg
def test_migrate_on_postgresql(short_tmp: Path, pg_database: str) -> None:
    app = start_myapp(short_tmp, database_url=pg_database)
    try:
        check_the_seed_story(app, pg_database)
    finally:
        app.close()
