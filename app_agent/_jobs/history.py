"""The durable job history: finished jobs kept in SQLite or PostgreSQL, written off the call path.

Where it lives (``start(history=...)``, else ``RPCCTL_HISTORY``):

    sqlite:PATH          a SQLite file in WAL mode, created owner-only (0600); a relative PATH
                         is resolved against the app's working directory at start
    postgresql://...     one table, ``rpcctl_history``, shared by every replica that names the
                         same database, created on first use (``postgres://`` and
                         ``postgresql+DRIVER://`` too; the driver is found as for locks)
    off                  no durable history
    (nothing)            an agent on ``unix:SOCKET`` keeps ``SOCKET.history.sqlite3``; one on
                         tcp:// or tls:// keeps none: a container has no obvious place for
                         it, and a file appearing in the working directory would surprise

The app never waits for the database: :meth:`HistoryStore.record` puts the record on a bounded
queue (QUEUE_SIZE; past it records are dropped and counted), and one writer thread, started
by the first record and gone after WRITER_IDLE idle seconds, writes them in batches (at
most one transaction per LINGER seconds; a flush cuts the wait). The agent's job table
records each job once as it retires it (:meth:`HistoryStore.record_job`), and the
``history`` RPC method is :func:`answer`. A store
that is down, locked or full is logged once (``history.unavailable``), retried with a growing
delay, and logged again when it is back (``history.available_again``, with the records
dropped meanwhile); the writer reconnects by itself, so history survives a restart of the
app and of the database. Retention (the newest ``keep`` records and ``days`` days, per app)
is enforced by the writer in the transaction of the write that brings the records written
since the last prune to a tenth of ``keep`` (at most PRUNE_EVERY), or PRUNE_INTERVAL after
it, never on the caller's thread: a table holds at most about 10% more than ``keep``.
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from app_agent import wire
from app_agent._jobs.history_db import COLUMNS, SELECT, Database, Postgres, Prune, Sqlite
from app_agent._server import threads as _threads
from app_agent.exceptions import AgentError, ConfigurationError
from app_agent.logs import get_logger
from app_agent.wire import environment as env
from app_agent.wire import protocol, tracecontext
from app_agent.wire.backoff import Backoff

if TYPE_CHECKING:
    from app_agent._jobs.job import Job

OFF = "off"
SQLITE_SUFFIX = ".history.sqlite3"
"""The default store of an agent on ``unix:SOCKET``: ``SOCKET.history.sqlite3``."""
DEFAULT_KEEP = 10_000
"""Records kept per app, the newest first (``history_keep``, ``RPCCTL_HISTORY_KEEP``)."""
DEFAULT_DAYS = 30.0
"""Days a record is kept (``history_days``, ``RPCCTL_HISTORY_DAYS``)."""
QUEUE_SIZE = 5_000
"""Records waiting for the writer; past it they are dropped (and counted), so a database
that is down never grows the app's memory: ~0.5 KiB a record, ~2.5 MiB in all (more only
for tasks with ``record_args=True``, whose arguments are kept up to MAX_ARGUMENTS_BYTES)."""
BATCH = 1000
"""Records written in one transaction at most."""
LINGER = 0.5
"""Seconds the writer lets records gather before a write smaller than BATCH (a ``history``
request, a flush and the agent's stop cut it short): a busy app's records go in one
transaction per LINGER, not one per record. Every transaction costs the app's process CPU
and GIL hand-offs with the calls' threads (with LINGER 0.05 and dict rows a no-op call
cost the host 15-30 % more CPU; now 5-12 %: docs/performance.md)."""
WRITER_IDLE = 5.0
"""Seconds the writer thread waits for a record before it exits (the next record starts one)."""
RETRY_FIRST = 0.5
RETRY_MAX = 30.0
"""Seconds between attempts while the store is unavailable: from RETRY_FIRST, growing to this."""
PRUNE_INTERVAL = 3600.0
"""Seconds between prunes at most."""
PRUNE_EVERY = 1_000
"""Records written between prunes at most (a tenth of ``keep`` when that is fewer)."""
CLOSE_TIMEOUT = 2.0
QUERY_FLUSH_TIMEOUT = 1.0
"""Seconds a ``history`` request waits for the records queued before it to be written."""
"""Seconds :meth:`HistoryStore.close` waits for the queued records to be written."""
MAX_ERROR_LINE = 500
"""Characters kept of a failed job's error line."""
MAX_ARGUMENTS_BYTES = 4096
"""Argument values (``@task(record_args=True)``) are kept when they take at most this many
bytes as JSON; bigger ones are not (their sizes always are)."""
DEFAULT_LIMIT = protocol.HISTORY_DEFAULT_LIMIT
MAX_LIMIT = protocol.HISTORY_MAX_LIMIT
_FORMS = "sqlite:PATH, postgresql://USER@HOST/DATABASE or off"


class HistoryUnavailable(AgentError):
    """The history cannot be read: the store is off, or cannot be reached."""


class Record(NamedTuple):
    """What a finished job leaves in the history (the store adds where it ran: app, node,
    host, pid). Built on the thread that ends the job, so only cheap work here."""

    job: str
    task: str
    caller: str
    identity: str | None
    started: float
    """Seconds since the epoch (UTC)."""
    duration: float
    state: str
    exit_code: int
    error: str | None
    """The error's first line (``Type: message``), at most MAX_ERROR_LINE characters."""
    argument_sizes: Mapping[str, int]
    arguments: Mapping[str, Any] | None = None
    trace_id: str | None = None


def finished(
    job: Job, arguments: Mapping[str, Any] | None = None, trace_id: str | None = None
) -> Record:
    """The record of the ended *job*. Its *arguments* (the call's named arguments) are kept
    only when its task opted in with ``@task(record_args=True)`` and they take at most
    MAX_ARGUMENTS_BYTES as JSON (the sizes the audit measured tell, without encoding them)."""
    audit = job.audit
    sizes: Mapping[str, int] = audit.get("argument_sizes") or _NO_SIZES
    kept = None
    if arguments and job.task.record_args and sum(sizes.values()) <= MAX_ARGUMENTS_BYTES:
        kept = arguments
    state = job.state
    error = job.error
    line = None
    if error is None:
        exit_code = 0 if state == protocol.SUCCEEDED else 1
    else:
        exit_code = _exit_code(error)
        message = str(error.get("message") or "").strip().partition("\n")[0]
        kind = str(error.get("type") or error.get("kind") or "")
        line = ": ".join(part for part in (kind, message) if part)[:MAX_ERROR_LINE] or None
    started = job.started_at
    end = job.finished_at
    # Positional: on the thread that ended the job, every microsecond is the call's.
    return Record(
        job.id,
        job.task.name,
        job.caller,
        audit.get("identity"),
        started,
        (end if end is not None else time.time()) - started,
        state,
        exit_code,
        line,
        sizes,
        kept,
        trace_id,
    )


_NO_SIZES: Mapping[str, int] = {}


def _exit_code(error: Mapping[str, Any] | None) -> int:
    """The exit code an ended job's caller got: its error's kind's (1 when it has none)."""
    try:
        return wire.ErrorKind(error["kind"]).exit_code if error else 1
    except (KeyError, ValueError):
        return 1


# -- the RPC method ---------------------------------------------------------------------------


def answer(store: Store, **bound: Any) -> str:
    """The reply to a ``history`` request (protocol.METHODS["history"]) from *store*: its
    records, newest first; a usage error for bad arguments or a store that is off, the
    store's own failure (unreachable, exit 3) when it cannot be read."""
    try:
        # This node's jobs that ended before the request, written first (not waiting for
        # the writer's linger); a store that is down is the query's to report.
        store.flush(QUERY_FLUSH_TIMEOUT)
        entries = store.query(**bound)
    except ValueError as exc:
        return wire.error(wire.ErrorKind.USAGE, str(exc), wire.Reason.BAD_ARGUMENTS)
    except HistoryUnavailable as exc:
        if isinstance(store, NoHistory):
            return wire.error(wire.ErrorKind.USAGE, str(exc), wire.Reason.HISTORY_OFF)
        return wire.error(wire.ErrorKind.UNREACHABLE, str(exc), wire.Reason.HISTORY_DOWN)
    return wire.ok(entries)


# -- the spec --------------------------------------------------------------------------------


def default_path(address: wire.Address) -> str | None:
    """Where an agent at *address* keeps its history when told nothing: beside its UNIX
    socket; None (no history) on tcp:// and tls://."""
    return address.path + SQLITE_SUFFIX if address.is_unix else None


def resolve(spec: str | None, default: str | None) -> str:
    """The store *spec* names, resolved: ``off``, ``sqlite:ABSOLUTE_PATH`` or a PostgreSQL URL.
    No spec means a SQLite file at *default*, or off without one. ConfigurationError naming
    the accepted forms."""
    if spec is not None and not isinstance(spec, str):
        msg = f"history must be a string ({_FORMS}), not {spec!r}"
        raise ConfigurationError(msg)
    text = (spec or "").strip()
    if not text:
        return f"sqlite:{os.path.abspath(default)}" if default else OFF
    if text.lower() == OFF:
        return OFF
    if text.startswith("sqlite:"):
        path = text.removeprefix("sqlite:")
        if path.startswith("//"):  # sqlite:///abs/path, as SQLAlchemy writes it
            path = path[2:]
        if not path.strip():
            msg = f"bad history store {text!r}: the SQLite path is empty (expected {_FORMS})"
            raise ConfigurationError(msg)
        return f"sqlite:{os.path.abspath(path)}"
    scheme, sep, rest = text.partition("://")
    if sep and rest and scheme.partition("+")[0] in ("postgresql", "postgres"):
        return text
    msg = f"bad history store {shown(text)!r}: expected {_FORMS} (start(history=) or {env.HISTORY})"
    raise ConfigurationError(msg)


def shown(spec: str) -> str:
    """*spec* as logs and messages may show it: a URL's password masked."""
    try:
        parts = urllib.parse.urlsplit(spec)
        password = parts.password
    except ValueError:
        return spec.partition("://")[0] + "://..."
    if not password:
        return spec
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def open_store(
    spec: str | None,
    default: str | None = None,
    *,
    app: str,
    node: str,
    keep: int = DEFAULT_KEEP,
    days: float = DEFAULT_DAYS,
    log: Any = None,
) -> Store:
    """The store *spec* names (see :func:`resolve`; *default*: the SQLite file used without
    one). Opening touches no database: the first record (or query) does, so an agent starts
    while its database is down. ConfigurationError for a bad spec, or PostgreSQL without
    SQLAlchemy or a driver."""
    resolved = resolve(spec, default)
    if resolved == OFF:
        return NoHistory()
    database: Database
    if resolved.startswith("sqlite:"):
        database = Sqlite(resolved.removeprefix("sqlite:"))
    else:
        database = Postgres(resolved)
    return HistoryStore(database, app=app, node=node, keep=keep, days=days, log=log)


# -- the stores ------------------------------------------------------------------------------


class NoHistory:
    """``history=off`` (or a tcp:// agent told nothing): records go nowhere."""

    spec = OFF

    def record(self, record: Record) -> None:
        pass

    def record_job(self, job: Job) -> None:
        pass

    def query(
        self,
        since: float | None = None,
        task: str | None = None,
        identity: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[dict[str, Any]]:
        msg = (
            "this agent keeps no job history (history is off: start the app with "
            f"history='sqlite:PATH' or 'postgresql://...', or set {env.HISTORY})"
        )
        raise HistoryUnavailable(msg)

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        pass

    def abandon_in_child(self) -> None:
        pass


class HistoryStore:
    """Finished jobs of one app, in a database, written by a thread of the store's own."""

    def __init__(
        self,
        database: Database,
        *,
        app: str,
        node: str,
        keep: int = DEFAULT_KEEP,
        days: float = DEFAULT_DAYS,
        log: Any = None,
        idle: float | None = None,
    ) -> None:
        self.spec = database.spec
        self.app = app
        self.node = node
        self.keep = keep
        self.days = days
        self._database = database
        self._log = log if log is not None else get_logger()
        self._host = _clean(os.uname().nodename)
        self._idle = WRITER_IDLE if idle is None else idle
        # Records, and flush markers (Events set once what came before them is written).
        self._queue: queue.SimpleQueue[Record | threading.Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._writing = False  # a writer thread is running, or about to
        self._writer: threading.Thread | None = None
        self._closed = False
        self._closing = threading.Event()
        self._hurry = threading.Event()  # a flush or close waits: linger no more
        self._no_thread_logged = False
        self._build_failed_logged = False
        self.written = 0
        """Records written so far (or found written already, by a batch tried again)."""
        self.dropped = 0
        """Records dropped so far: the queue was full, or the store closed."""
        self._dropped_reported = 0
        self._down_since: float | None = None  # monotonic, while the store is unavailable
        self._dropped_at_down = 0
        self._prune_every = max(1, min(keep // 10, PRUNE_EVERY))
        self._since_prune = 0
        self._last_prune = -math.inf
        self._last_write = -math.inf  # monotonic: when the last write began

    # -- the caller's side: nothing here may block or raise -----------------------------------

    def record(self, record: Record) -> None:
        """Queue *record* for the writer; never waits, never raises."""
        if self._closed or self._queue.qsize() >= QUEUE_SIZE:
            with self._lock:
                self.dropped += 1
            return
        self._queue.put(record)
        if not self._writing:
            self._start_writer()

    def record_job(self, job: Job) -> None:
        """Record the ended *job* (the job table calls this once per job, as it retires it);
        never raises: a record that cannot be built is logged once and the call goes on."""
        try:
            trace = tracecontext.trace_id(job.traceparent) if job.traceparent else None
            record = finished(job, job.arguments, trace)
        except Exception as exc:  # noqa: BLE001  (the history must never fail a call)
            if not self._build_failed_logged:
                self._build_failed_logged = True
                self._log.warning("history.record_failed", job=job.id, error=_first_line(exc))
            return
        self.record(record)

    def _start_writer(self) -> None:
        with self._lock:
            if self._writing or self._closed:
                return
            thread = threading.Thread(target=self._run, name="rpcctl-history", daemon=True)
            try:
                _threads.start(thread)
            except _threads.NoThread as exc:  # the records wait; the next one tries again
                if not self._no_thread_logged:
                    self._no_thread_logged = True
                    self._log.warning("history.no_thread", store=shown(self.spec), error=str(exc))
                return
            self._writing = True
            self._writer = thread

    # -- reading -----------------------------------------------------------------------------

    def query(
        self,
        since: float | None = None,
        task: str | None = None,
        identity: str | None = None,
        limit: int = DEFAULT_LIMIT,
    ) -> list[dict[str, Any]]:
        """This app's finished jobs, newest first, as plain data (the table's columns by
        name, where it ran included): started at or after *since* (seconds since the epoch),
        of tasks matching the glob *task* (``*`` and ``?``), called by *identity*, at most
        *limit* of them. ValueError for a bad argument; HistoryUnavailable when the store
        cannot be read."""
        _check_query(since, task, identity, limit)
        where = ["app = :app"]
        params: dict[str, Any] = {"app": self.app, "limit": limit}
        if since is not None:
            where.append("started >= :since")
            params["since"] = since
        if task is not None:
            condition, params["task"] = self._database.glob(task)
            where.append(condition)
        if identity is not None:
            where.append("identity = :identity")
            params["identity"] = identity
        sql = f"{SELECT} WHERE {' AND '.join(where)} ORDER BY started DESC, job DESC LIMIT :limit"
        try:
            rows = self._database.select(sql, params)
        except Exception as exc:  # noqa: BLE001  (whatever the driver raises: one clear line)
            msg = f"the history store {shown(self.spec)} cannot be read: {_first_line(exc)}"
            raise HistoryUnavailable(msg) from None
        return [_entry(row) for row in rows]

    # -- flushing and closing ----------------------------------------------------------------

    def flush(self, timeout: float) -> bool:
        """Wait up to *timeout* seconds for every record queued so far to be written (or
        dropped); False when they were not."""
        if self._closed:
            return self._queue.qsize() == 0
        marker = threading.Event()
        self._queue.put(marker)
        self._hurry.set()
        self._start_writer()
        return marker.wait(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Write what is queued, waiting up to *timeout* seconds (the agent is stopping), then
        let go of the database. Records that could not be written are logged
        (``history.lost``); later records are dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._closing.set()
        self._hurry.set()
        marker = threading.Event()
        self._queue.put(marker)
        with self._lock:
            writer = self._writer if self._writing else None
            if writer is None:
                self._writing = True  # a writer for the last records; none starts after it
                writer = threading.Thread(target=self._run, name="rpcctl-history", daemon=True)
                try:
                    _threads.start(writer)
                except _threads.NoThread:
                    writer = None
        if writer is not None:
            writer.join(timeout)
        left = _discard(self._queue)
        if left or (writer is not None and writer.is_alive()):
            self._log.warning(
                "history.lost",
                store=shown(self.spec),
                count=left,
                reason=f"not written within {timeout:g}s of the agent stopping",
            )
        self._report_drops(force=True)
        if writer is None or not writer.is_alive():
            self._database.close()

    def abandon_in_child(self) -> None:
        """After a fork, in the child (as the agent abandons itself there): the writer did
        not come along, and its connection is the parent's. Write nothing more, and never
        touch that connection: later records are dropped."""
        self._lock = threading.Lock()  # a parent's thread may have held it at the fork
        self._closed = True
        self._writing = True  # no writer starts in this process
        self._queue = queue.SimpleQueue()
        self._database.abandon()

    # -- the writer's side -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._write_until_idle()
        except BaseException as exc:  # noqa: BLE001  (a writer that dies must let the next start)
            self._log.error("history.writer_failed", store=shown(self.spec), error=repr(exc))
            with self._lock:
                self._database.disconnect()
                self._writing = False

    def _write_until_idle(self) -> None:
        retry = Backoff(RETRY_FIRST, RETRY_MAX, factor=2)
        batch: list[Record] = []
        marker: threading.Event | None = None
        while True:
            if not batch and marker is None:
                idle = self._queue.qsize() == 0
                first = self._next()
                if first is None:
                    return
                if isinstance(first, Record) and self._queue.qsize() < BATCH:
                    # A burst gathers for LINGER from its first record; records that came
                    # during a write, until LINGER after that write began: at most one
                    # transaction per LINGER, and never fewer records written than arrive.
                    pause = LINGER if idle else self._last_write + LINGER - time.monotonic()
                    if pause > 0:
                        self._hurry.wait(pause)  # cut short by flush() and close()
                batch, marker = _take(first, self._queue)
                if not self._closing.is_set():
                    self._hurry.clear()
            if batch:
                if self._write(batch):
                    batch = []
                    retry = Backoff(RETRY_FIRST, RETRY_MAX, factor=2)
                elif self._closing.is_set():  # stopping, and the store is down: give up
                    self._log.warning(
                        "history.lost",
                        store=shown(self.spec),
                        count=len(batch) + _discard(self._queue),
                        reason="the store is unavailable",
                    )
                    batch = []
                else:
                    self._closing.wait(retry.pause())  # woken by close()
                    continue
            if marker is not None:
                marker.set()
                marker = None

    def _next(self) -> Record | threading.Event | None:
        """The next item, waiting up to the idle time (not at all once closing); None when
        the writer should exit: then no writer runs until the next record starts one."""
        while True:
            try:
                if self._closing.is_set():
                    return self._queue.get_nowait()
                return self._queue.get(timeout=self._idle)
            except queue.Empty:
                with self._lock:
                    # A record put after the timeout and before the lock saw a writer
                    # running and started none: stay and write it.
                    if self._queue.qsize() == 0:
                        self._database.disconnect()  # before the next writer connects
                        self._writing = False
                        return None

    def _write(self, batch: list[Record]) -> bool:
        """Write *batch* (and prune, when due); False when the store is unavailable."""
        self._last_write = time.monotonic()
        where = (_clean(self.app), self._host, os.getpid(), _clean(self.node))
        rows = [_row(record, where) for record in batch]
        prune = self._prune_due(len(rows))
        refused = 0
        failure = self._attempt(rows, prune)
        if failure is not None and not self._database.unavailable(failure):
            failure = self._attempt(rows, prune)  # the table may have gone: now made again
            if failure is not None and not self._database.unavailable(failure):
                failure, refused = self._write_one_by_one(rows)
                prune = None
        if failure is not None:
            self._went_down(failure)
            return False
        self._came_back()
        self.written += len(rows) - refused
        self._since_prune += len(rows)
        if prune is not None:
            self._since_prune = 0
            self._last_prune = time.monotonic()
        self._report_drops()
        return True

    def _attempt(self, rows: list[tuple[Any, ...]], prune: Prune | None) -> BaseException | None:
        """Write *rows* in one transaction; the failure, if any."""
        try:
            self._database.write(rows, prune)
        except Exception as exc:  # noqa: BLE001  (the store failing is never the app's failure)
            self._database.disconnect()
            return exc
        return None

    def _write_one_by_one(self, rows: list[tuple[Any, ...]]) -> tuple[BaseException | None, int]:
        """Write what the database accepts of *rows* (refused twice as a batch), and log the
        rows it refuses for their content, never to retry them: (the failure when the store
        turns out to be unavailable, how many rows it refused)."""
        refused: list[str] = []
        for row in rows:
            failure = self._attempt([row], None)
            if failure is not None:
                if self._database.unavailable(failure):
                    return failure, len(refused)
                refused.append(f"job {row[_JOB]}: {_first_line(failure)}")
        if refused:
            self._log.warning(
                "history.refused", store=shown(self.spec), count=len(refused), first=refused[0]
            )
        return None, len(refused)

    def _prune_due(self, count: int) -> Prune | None:
        """What to prune with the next *count* records: on the write that brings those
        written since the last prune to a tenth of ``keep`` (at most PRUNE_EVERY), or
        PRUNE_INTERVAL after the last."""
        due = self._since_prune + count >= self._prune_every
        if due or time.monotonic() - self._last_prune >= PRUNE_INTERVAL:
            return Prune(self.app, self.keep, time.time() - self.days * 86400)
        return None

    def _went_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self._dropped_at_down = self.dropped
            self._log.warning(
                "history.unavailable",
                store=shown(self.spec),
                error=_first_line(exc),
                queued=self._queue.qsize(),
                retry_max_s=RETRY_MAX,
            )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        self._log.info(
            "history.available_again",
            store=shown(self.spec),
            down_s=round(time.monotonic() - self._down_since, 1),
            dropped=self.dropped - self._dropped_at_down,
        )
        self._dropped_reported = self.dropped
        self._down_since = None

    def _report_drops(self, force: bool = False) -> None:
        """Log the records dropped since the last report (the queue was full)."""
        dropped = self.dropped
        if dropped > self._dropped_reported and (force or self._down_since is None):
            self._log.warning(
                "history.dropped",
                store=shown(self.spec),
                count=dropped - self._dropped_reported,
                total=dropped,
                reason=f"more than {QUEUE_SIZE:,} records were waiting to be written",
            )
            self._dropped_reported = dropped


def _take(
    first: Record | threading.Event, items: queue.SimpleQueue[Record | threading.Event]
) -> tuple[list[Record], threading.Event | None]:
    """A batch of records from *first* on, up to BATCH or the first flush marker."""
    batch: list[Record] = []
    item = first
    while True:
        if isinstance(item, threading.Event):
            return batch, item
        batch.append(item)
        if len(batch) >= BATCH:
            return batch, None
        try:
            item = items.get_nowait()
        except queue.Empty:
            return batch, None


def _discard(items: queue.SimpleQueue[Record | threading.Event]) -> int:
    """Empty *items*: how many records it held; flush markers are set (nobody will write)."""
    count = 0
    while True:
        try:
            item = items.get_nowait()
        except queue.Empty:
            return count
        if isinstance(item, threading.Event):
            item.set()
        else:
            count += 1


def _row(record: Record, where: tuple[Any, ...]) -> tuple[Any, ...]:
    """*record* as the table's columns, in their order, after *where* it ran (app, host,
    pid, node): a tuple, built with as little Python as can be (the writer shares the GIL
    with the calls)."""
    job, task, caller, identity, started, duration, state, code, error, sizes, arguments, trace = (
        record
    )
    return (
        *where,
        _clean(job),
        _clean(task),
        _clean(caller),
        _clean(identity),
        started,
        round(duration, 3),
        state,
        code,
        _clean(error),
        json.dumps(dict(sizes)) if sizes else "{}",
        None if arguments is None else _clean(_json(arguments)),
        _clean(trace),
    )


_JOB = COLUMNS.index("job")


def _check_query(since: Any, task: Any, identity: Any, limit: Any) -> None:
    if since is not None and (
        not isinstance(since, int | float) or isinstance(since, bool) or not math.isfinite(since)
    ):
        msg = f"since must be a time in seconds since the epoch, not {since!r}"
        raise ValueError(msg)
    for name, value in (("task", task), ("identity", identity)):
        if value is not None and (not isinstance(value, str) or not value):
            msg = f"{name} must be a non-empty string, not {value!r}"
            raise ValueError(msg)
    if task is not None and (problem := protocol.task_glob_problem(task)) is not None:
        raise ValueError(problem)
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        msg = f"limit must be a whole number from 1 to {MAX_LIMIT:,}, not {limit!r}"
        raise ValueError(msg)


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as plain data, ready for JSON: the table's columns by name."""
    entry = dict(zip(COLUMNS, row, strict=True))
    entry["argument_sizes"] = json.loads(entry["argument_sizes"])
    if entry["arguments"] is not None:
        entry["arguments"] = json.loads(entry["arguments"])
    return entry


def _json(value: Any) -> str:
    try:
        return wire.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(repr(value))


def _clean(value: Any) -> Any:
    """Text either database takes: no NUL (PostgreSQL refuses it), no lone surrogate (no
    encoding takes it)."""
    if not isinstance(value, str) or ("\x00" not in value and value.isascii()):
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode()
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode()
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().partition("\n")[0]
    return f"{type(exc).__name__}: {text}"[:MAX_ERROR_LINE]


Store = HistoryStore | NoHistory
"""What :func:`open_store` returns."""
