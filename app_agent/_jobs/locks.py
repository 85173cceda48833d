"""Run-once locks for ``@task(lock="name")``: in this process, on this host, or across hosts.

A backend acquires a named lock for a job, waiting up to a deadline, and otherwise reports
who holds it. The holder dying releases the lock: a thread's job always releases it in a
``finally``; the kernel drops a dead process's ``flock``; PostgreSQL ends a dead session's
advisory locks.

    ""  or "memory"            in this process (the default)
    "file:/run/myapp/locks"    one flock file per lock name in that directory: every process
                               on the host that points at the same directory
    "postgresql://..."         pg_try_advisory_lock on a session of its own: every replica
                               that points at the same database
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import json
import os
import threading
import time
from typing import Any, Protocol

from app_agent.exceptions import ConfigurationError
from app_agent.wire.backoff import Backoff


class Holder:
    """Who holds a lock: shown to the caller that found it busy."""

    def __init__(self, job: str, task: str, caller: str, since: float, where: str = "") -> None:
        self.job = job
        self.task = task
        self.caller = caller
        self.since = since
        self.where = where

    def to_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "task": self.task,
            "caller": self.caller,
            "since": self.since,
            "where": self.where,
        }

    def describe(self, name: str) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        where = f" on {self.where}" if self.where else ""
        return (
            f"lock {name!r} is held by job {self.job} ({self.task}, called by {self.caller}"
            f"{where}) since {since}"
        )


class Busy(Exception):
    """The lock stayed held until the deadline."""

    def __init__(self, name: str, holder: Holder | None) -> None:
        self.name = name
        self.holder = holder
        message = holder.describe(name) if holder else f"lock {name!r} is held by another job"
        super().__init__(message)


class Lease(Protocol):
    def release(self) -> None: ...


class Backend(Protocol):
    def acquire(self, name: str, holder: Holder, wait: float) -> Lease: ...


def _backoff(wait: float) -> Backoff:
    """How a lock is waited for: tries 10 ms apart at first, then up to 250 ms."""
    return Backoff(0.01, 0.25, time.monotonic() + wait, factor=2)


class MemoryLocks:
    """Locks shared by the threads of this process."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, Holder] = {}
        self._freed = threading.Condition(self._guard)

    def acquire(self, name: str, holder: Holder, wait: float) -> Lease:
        deadline = time.monotonic() + wait
        with self._freed:
            while name in self._held:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Busy(name, self._held[name])
                self._freed.wait(remaining)
            self._held[name] = holder
        return _MemoryLease(self, name)

    def _release(self, name: str) -> None:
        with self._freed:
            self._held.pop(name, None)
            self._freed.notify_all()


class _MemoryLease:
    def __init__(self, locks: MemoryLocks, name: str) -> None:
        self._locks = locks
        self._name = name

    def release(self) -> None:
        self._locks._release(self._name)


class FileLocks:
    """``flock`` on ``DIRECTORY/NAME.lock``; the file holds the holder's description."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def acquire(self, name: str, holder: Holder, wait: float) -> Lease:
        import fcntl

        path = os.path.join(self.directory, f"{_safe(name)}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        backoff = _backoff(wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not backoff.sleep():
                    current = _read_holder(fd)
                    os.close(fd)
                    raise Busy(name, current) from None
        holder.where = f"pid {os.getpid()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.to_dict()).encode(), 0)
        return _FileLease(fd)


class _FileLease:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        import fcntl

        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _read_holder(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


PG_DRIVERS: tuple[tuple[str, str], ...] = (
    ("psycopg", "psycopg[binary]"),  # psycopg 3, SQLAlchemy 2.1's default
    ("psycopg2", "psycopg2-binary"),
)
"""PostgreSQL drivers a plain ``postgresql://`` URL may use, in order of preference, with
the distribution that installs each."""


class PostgresLocks:
    """``pg_try_advisory_lock`` held by a database session of the lock's own.

    After acquiring, the session runs a no-op query that carries the holder's description;
    a replica that finds the lock busy reads it back from ``pg_stat_activity``.

    A plain ``postgresql://`` (or ``postgres://``) URL uses whichever driver is installed
    (:data:`PG_DRIVERS`), not SQLAlchemy's default for its version, which may be missing;
    ``postgresql+DRIVER://`` is used as given.
    """

    def __init__(self, url: str) -> None:
        self.engine = pg_engine(url, "PostgreSQL locks", pool=False)
        import sqlalchemy

        self._text = sqlalchemy.text

    def acquire(self, name: str, holder: Holder, wait: float) -> Lease:
        key = _lock_key(name)
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            backoff = _backoff(wait)
            try_lock = self._text("SELECT pg_try_advisory_lock(:k)")
            while not connection.execute(try_lock, {"k": key}).scalar():
                if not backoff.sleep():
                    raise Busy(name, self._holder(connection, key))
            holder.where = f"{os.uname().nodename} pid {os.getpid()}"
            # base64: no quote, colon or percent sign can reach the SQL text.
            tag = base64.b64encode(json.dumps(holder.to_dict()).encode()).decode()
            connection.execute(self._text(f"SELECT 'rpcctl-lock {tag}'"))
        except BaseException:
            connection.close()
            raise
        return _PostgresLease(connection, key, self._text)

    def _holder(self, connection: Any, key: int) -> Holder | None:
        unsigned = key & 0xFFFFFFFFFFFFFFFF
        row = connection.execute(
            self._text(
                "SELECT a.query FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid = :hi AND l.objid = :lo"
            ),
            {"hi": unsigned >> 32, "lo": unsigned & 0xFFFFFFFF},
        ).first()
        return _parse_tag(str(row[0])) if row is not None else None


def _parse_tag(query: str) -> Holder | None:
    marker = "rpcctl-lock "
    if marker not in query:
        return None
    tag = query.split(marker, 1)[1].split("'", 1)[0]
    try:
        data = json.loads(base64.b64decode(tag))
        return Holder(**data) if isinstance(data, dict) else None
    except (ValueError, TypeError):
        return None


class _PostgresLease:
    def __init__(self, connection: Any, key: int, text: Any) -> None:
        self._connection = connection
        self._key = key
        self._text = text

    def release(self) -> None:
        try:
            self._connection.execute(self._text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        finally:
            self._connection.close()  # ending the session releases the lock in any case


def pg_engine(url: str, what: str, pool: bool, **options: Any) -> Any:
    """A SQLAlchemy engine for the PostgreSQL *url* (a plain one names an installed driver,
    see :func:`with_driver`), created with *options*. With *pool*, sessions are kept between
    uses and checked before each (one may have died with a database restart); without, each
    use opens a session of its own (a lock's session ends with its lease).

    ConfigurationError saying what *what* ("PostgreSQL locks") needs when SQLAlchemy or the
    driver is missing, or when the URL is bad.
    """
    try:
        import sqlalchemy
    except ImportError:
        msg = f"{what} need SQLAlchemy and a driver: pip install sqlalchemy {_install_hint()}"
        raise ConfigurationError(msg) from None
    full_url = with_driver(url, what)
    if pool:
        options.setdefault("pool_pre_ping", True)
    else:
        options["poolclass"] = sqlalchemy.pool.NullPool
    try:
        return sqlalchemy.create_engine(full_url, **options)
    except ImportError as exc:
        scheme = full_url.split("://", 1)[0]
        msg = f"{what}: the driver of {scheme}:// is not installed ({exc})"
        raise ConfigurationError(msg) from None
    except sqlalchemy.exc.ArgumentError as exc:
        msg = f"{what}: bad database URL ({exc})"
        raise ConfigurationError(msg) from None


def with_driver(url: str, what: str = "PostgreSQL locks") -> str:
    """*url* with an installed PostgreSQL driver named, unless it names one already."""
    scheme, sep, rest = url.partition("://")
    if not sep or "+" in scheme:
        return url
    return f"postgresql+{installed_driver(what)}://{rest}"


def installed_driver(what: str = "PostgreSQL locks") -> str:
    """The first PostgreSQL driver of :data:`PG_DRIVERS` that imports; ConfigurationError
    naming what *what* needs installed when none does."""
    for module, _distribution in PG_DRIVERS:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        return module
    msg = f"{what} need a PostgreSQL driver: pip install {_install_hint()}"
    raise ConfigurationError(msg)


def _install_hint() -> str:
    first, *others = (f"'{dist}'" if "[" in dist else dist for _module, dist in PG_DRIVERS)
    return f"{first} (or {', '.join(others)})"


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock."""
    return int.from_bytes(
        hashlib.sha256(f"rpcctl:{name}".encode()).digest()[:8], "big", signed=True
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def backend(spec: str | None) -> Backend:
    """The lock backend for *spec* (see the module docstring)."""
    if not spec or spec == "memory":
        return MemoryLocks()
    if spec.startswith("file:"):
        return FileLocks(spec.removeprefix("file:"))
    if spec.startswith(("postgresql:", "postgresql+", "postgres:")):
        return PostgresLocks(spec)
    msg = f"unknown lock backend {spec!r}: use memory, file:DIRECTORY or postgresql://..."
    raise ValueError(msg)
