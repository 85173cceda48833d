"""The durable history's databases: one schema for SQLite and PostgreSQL, its statements,
and the two engines behind the store (:mod:`app_agent._jobs.history`): a private SQLite
file beside a UNIX socket (0600, WAL), or one PostgreSQL table shared by a fleet."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    import sqlite3


TABLE = "rpcctl_history"
SQLITE_BUSY_TIMEOUT = 2.0
"""Seconds a SQLite statement waits for another process's write lock before failing."""
PG_SESSION_DEFAULTS: Mapping[str, Any] = {
    "connect_timeout": 5,
    # A database gone without a word (a partition, a dead host) is noticed in ~25 s.
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "options": "-c statement_timeout=10000",
}
"""libpq settings of the store's sessions, unless the URL sets them: a stalled database
fails a write (and is logged) instead of holding the writer for ever."""
COLUMNS = (
    "app",
    "host",
    "pid",
    "node",
    "job",
    "task",
    "caller",
    "identity",
    "started",
    "duration",
    "state",
    "exit_code",
    "error",
    "argument_sizes",
    "arguments",
    "trace_id",
)
# One schema for both engines: SQLite reads these type names by affinity. Times are seconds
# since the epoch (UTC): ``to_timestamp(started)`` in PostgreSQL, ``datetime(started,
# 'unixepoch')`` in SQLite.
_CREATE_TABLE = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    app TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    node TEXT NOT NULL,
    job TEXT NOT NULL,
    task TEXT NOT NULL,
    caller TEXT NOT NULL,
    identity TEXT,
    started DOUBLE PRECISION NOT NULL,
    duration DOUBLE PRECISION NOT NULL,
    state TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    error TEXT,
    argument_sizes TEXT NOT NULL,
    arguments TEXT,
    trace_id TEXT,
    PRIMARY KEY (app, host, pid, job)
)"""
_CREATE_INDEX = f"CREATE INDEX IF NOT EXISTS {TABLE}_app_started ON {TABLE} (app, started)"
_COLUMN_LIST = ", ".join(COLUMNS)
# ON CONFLICT: a batch retried after a commit whose answer was lost is written once.
_INSERT = (
    f"INSERT INTO {TABLE} ({_COLUMN_LIST}) "  # noqa: S608  (constants: values are bound)
    f"VALUES ({', '.join('?' for _ in COLUMNS)}) ON CONFLICT DO NOTHING"
)
# PostgreSQL: one statement per batch, its rows as one JSON text (arrays of the columns'
# values), which json's C encoder writes: a psycopg array per column is escaped element by
# element in Python (the app's CPU per record: ~19 µs against ~8), and an executemany sends
# and reads back a statement per row. jsonb, parsed once: with json, each ->> parses the
# row again (the server's CPU per record: ~38 µs against ~18, as much as the arrays cost).
_PG_TYPES = {"pid": "integer", "exit_code": "integer", "started": "float8", "duration": "float8"}
_PG_INSERT = (
    f"INSERT INTO {TABLE} ({_COLUMN_LIST}) SELECT "  # noqa: S608  (same)
    + ", ".join(f"CAST(r->>{i} AS {_PG_TYPES.get(c, 'text')})" for i, c in enumerate(COLUMNS))
    + " FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r ON CONFLICT DO NOTHING"
)
SELECT = f"SELECT {_COLUMN_LIST} FROM {TABLE}"  # noqa: S608  (same)
_PRUNE_AGE = f"DELETE FROM {TABLE} WHERE app = :app AND started < :before"  # noqa: S608  (same)
_PRUNE_COUNT = (
    f"DELETE FROM {TABLE} WHERE app = :app AND started < ("  # noqa: S608  (same)
    f"SELECT started FROM {TABLE} WHERE app = :app ORDER BY started DESC LIMIT 1 OFFSET :skip)"
)


class Prune(NamedTuple):
    app: str
    keep: int
    before: float


# -- the databases -----------------------------------------------------------------------------


class Database(Protocol):
    spec: str

    def write(self, rows: list[tuple[Any, ...]], prune: Prune | None) -> None:
        """Insert *rows* (and prune) in one transaction, connecting first if need be."""

    def select(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...

    def glob(self, pattern: str) -> tuple[str, str]:
        """A condition on ``task`` matching the glob *pattern*, and its parameter."""

    def unavailable(self, exc: BaseException) -> bool:
        """Whether *exc* means the store cannot be used now (rather than that it refused
        what was written)."""

    def disconnect(self) -> None:
        """Let go of the writer's connection (the next write connects again)."""

    def abandon(self) -> None:
        """In a forked child: forget the parent's connections without closing them."""

    def close(self) -> None: ...


def _prune_statements(prune: Prune) -> list[tuple[str, dict[str, Any]]]:
    return [
        (_PRUNE_AGE, {"app": prune.app, "before": prune.before}),
        (_PRUNE_COUNT, {"app": prune.app, "skip": prune.keep - 1}),
    ]


class Sqlite:
    """A SQLite file: one connection for the writer, one per query."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spec = f"sqlite:{path}"
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        import sqlite3

        _create_private(self.path)
        connection = sqlite3.connect(
            self.path, timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable but the last commits
            with connection:
                connection.execute(_CREATE_TABLE)
                connection.execute(_CREATE_INDEX)
        except BaseException:
            connection.close()
            raise
        return connection

    def write(self, rows: list[tuple[Any, ...]], prune: Prune | None) -> None:
        if self._connection is None:
            self._connection = self._connect()
        with self._connection as connection:
            connection.executemany(_INSERT, rows)
            for sql, params in _prune_statements(prune) if prune is not None else ():
                connection.execute(sql, params)

    def select(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with contextlib.closing(self._connect()) as connection:
            return connection.execute(sql, params).fetchall()

    def glob(self, pattern: str) -> tuple[str, str]:
        # GLOB is case-sensitive, like the access file's patterns; "[" stands for itself.
        return "task GLOB :task", pattern.replace("[", "[[]")

    def unavailable(self, exc: BaseException) -> bool:
        import sqlite3

        refused = (
            sqlite3.IntegrityError,
            sqlite3.DataError,
            sqlite3.InterfaceError,
            sqlite3.ProgrammingError,
        )
        return not isinstance(exc, refused)

    def disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def abandon(self) -> None:
        # Kept, never closed nor used: closing a connection carried across a fork may
        # checkpoint the parent's WAL and delete it (sqlite.org/howtocorrupt.html, 2.6).
        if self._connection is not None:
            _INHERITED.append(self._connection)
        self._connection = None

    def close(self) -> None:
        self.disconnect()


_INHERITED: list[sqlite3.Connection] = []
"""SQLite connections a forked child inherited: held here so that nothing closes them."""


def _create_private(path: str) -> None:
    """Create the SQLite file owner-only (SQLite gives its -wal and -shm files the same
    mode), or check the one there: a regular file of this user's that nobody else may write.
    A link, or another user's file, planted there is refused (PermissionError, which the
    writer logs as the store being unavailable)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(path, flags, 0o600))
        return
    except FileExistsError:
        info = os.lstat(path)
    problem = ""
    if not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"belongs to uid {info.st_uid}, not to this app's user (uid {os.geteuid()})"
    elif info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        problem = f"may be written by others (mode {mode:04o}; fix it with chmod 600 {path})"
    if problem:
        msg = f"{path} {problem}: the history is not written there"
        raise PermissionError(msg)


class Postgres:
    """A PostgreSQL table shared by every replica: a small pool, sessions checked before use."""

    def __init__(self, url: str) -> None:
        from app_agent._jobs import locks as _locks

        self.spec = url
        settings = dict(PG_SESSION_DEFAULTS)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
        connect_args = {k: v for k, v in settings.items() if k not in query}
        self.engine = _locks.pg_engine(
            url,
            "PostgreSQL history stores",
            pool=True,
            pool_size=1,
            max_overflow=4,
            pool_timeout=5,
            connect_args=connect_args,
        )
        import sqlalchemy

        self._text = sqlalchemy.text
        self._insert = sqlalchemy.text(_PG_INSERT)
        self._exc = sqlalchemy.exc
        self._schema_ready = False

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self.engine.begin() as connection:
            if not self._schema_ready:
                self._create_schema(connection)
            yield connection
        self._schema_ready = True  # committed: no need to look again on this engine

    def _create_schema(self, connection: Any) -> None:
        """Create the table once, however many replicas try at once: two concurrent
        ``CREATE TABLE IF NOT EXISTS`` may both go ahead, and one fail on the catalog's
        unique index; a transaction-scoped advisory lock makes them take turns."""
        from app_agent._jobs.locks import _lock_key

        connection.execute(
            self._text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(f"schema {TABLE}")}
        )
        connection.execute(self._text(_CREATE_TABLE))
        connection.execute(self._text(_CREATE_INDEX))

    def write(self, rows: list[tuple[Any, ...]], prune: Prune | None) -> None:
        with self._transaction() as connection:
            connection.execute(self._insert, {"rows": json.dumps(rows)})
            for sql, params in _prune_statements(prune) if prune is not None else ():
                connection.execute(self._text(sql), params)

    def select(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with self._transaction() as connection:
            return [tuple(row) for row in connection.execute(self._text(sql), params)]

    def glob(self, pattern: str) -> tuple[str, str]:
        like = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "task LIKE :task ESCAPE '\\'", like.replace("*", "%").replace("?", "_")

    def unavailable(self, exc: BaseException) -> bool:
        refused = (self._exc.IntegrityError, self._exc.DataError, self._exc.ProgrammingError)
        return not isinstance(exc, refused) or bool(getattr(exc, "connection_invalidated", False))

    def disconnect(self) -> None:
        self._schema_ready = False  # the table may be gone (a database dropped and recreated)

    def abandon(self) -> None:
        self.engine.dispose(close=False)  # the pooled sessions are the parent's

    def close(self) -> None:
        self.engine.dispose()
