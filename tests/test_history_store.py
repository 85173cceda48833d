"""The durable job history's store (app_agent/_jobs/history.py): SQLite and the real PostgreSQL,
writes off the call path, a store that is down, locked or full, recovery, retention, the
queue's bound; the --since parser both sides use; the history start options."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from history_support import APP, NODE, events, record
from structlog.testing import capture_logs

import app_agent
from app_agent import config, task
from app_agent._jobs import history as _history
from app_agent._jobs.history import HistoryStore, HistoryUnavailable
from app_agent._jobs.job import Job
from app_agent._jobs.locks import Busy, Holder, MemoryLocks
from app_agent._jobs.table import JobTable
from app_agent._registry import Registry
from app_agent.exceptions import ConfigurationError
from app_agent.wire import times
from conftest import DEADLINE, NOBODY, as_user, needs_root, wait_until

# -- SQLite ----------------------------------------------------------------------------------


def test_sqlite_history_survives_a_restart(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    path = tmp_path / "history.sqlite3"
    first = stores(f"sqlite:{path}")
    now = time.time()
    first.record(record("aaaa0001", started=now - 30, duration=1.23456))
    first.record(
        record(
            "aaaa0002",
            started=now - 20,
            state="failed",
            exit_code=1,
            error="ValueError: no such revision",
            identity="deployer",
            caller="deployer (uid=1000 pid=7)",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        )
    )
    first.record(record("aaaa0003", started=now - 10, task="myapp.tasks.warm_cache"))
    first.close()  # the app stops: what was queued is written

    second = stores(f"sqlite:{path}", node="unix:/run/myapp/other.sock")
    found = second.query()
    assert [entry["job"] for entry in found] == ["aaaa0003", "aaaa0002", "aaaa0001"]
    assert found[1] == {
        "app": APP,
        "host": os.uname().nodename,
        "pid": os.getpid(),
        "node": NODE,
        "job": "aaaa0002",
        "task": "myapp.tasks.migrate",
        "caller": "deployer (uid=1000 pid=7)",
        "identity": "deployer",
        "started": pytest.approx(now - 20),
        "duration": 0.25,
        "state": "failed",
        "exit_code": 1,
        "error": "ValueError: no such revision",
        "argument_sizes": {"revision": 6},
        "arguments": None,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    assert found[2]["duration"] == 1.235  # milliseconds are enough


def recording_process(path: Path, prefix: str, count: int) -> subprocess.Popen[str]:
    """A real process that records *count* jobs into the SQLite store at *path*, prints
    FLUSHED once they are written, then waits for its stdin to close."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from app_agent._jobs import history as _history
        store = _history.open_store({f"sqlite:{path}"!r}, app={APP!r}, node="unix:/a.sock")
        for i in range({count}):
            store.record(_history.Record("{prefix}%04d" % i, "myapp.tasks.x", "uid=0", None,
                                         time.time(), 0.1, "succeeded", 0, None, {{}}))
        print("FLUSHED" if store.flush(30) else "NOT FLUSHED", flush=True)
        sys.stdin.read()
        store.close()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def flushed(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    return child.stdout.readline().strip()


def test_sqlite_history_survives_the_app_being_killed(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    """A real process records, flushes and is killed (SIGKILL: no close, no atexit); what
    it wrote is there for the next one."""
    path = tmp_path / "history.sqlite3"
    with recording_process(path, "job", 25) as child:
        try:
            assert flushed(child) == "FLUSHED"
        finally:
            child.kill()
            child.wait(DEADLINE)
    found = stores(f"sqlite:{path}").query(limit=100)
    assert sorted(entry["job"] for entry in found) == [f"job{i:04d}" for i in range(25)]
    assert {entry["pid"] for entry in found} == {child.pid}


def test_two_processes_share_one_sqlite_file(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    """Two apps on one host told the same sqlite:PATH write at the same time: SQLite's
    locking (and the store's busy timeout) lets both through."""
    path = tmp_path / "history.sqlite3"
    with recording_process(path, "a", 600) as first, recording_process(path, "b", 600) as second:
        try:
            assert (flushed(first), flushed(second)) == ("FLUSHED", "FLUSHED")
        finally:
            for child in (first, second):
                child.communicate("", timeout=DEADLINE)
    assert (first.returncode, second.returncode) == (0, 0)
    found = stores(f"sqlite:{path}").query(limit=2000)
    assert len(found) == 1200
    assert {entry["pid"] for entry in found} == {first.pid, second.pid}


def test_sqlite_file_is_owner_only_and_in_wal_mode(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    path = tmp_path / "agent.sock.history.sqlite3"
    old_umask = os.umask(0)  # not the umask's doing: the file is made 0600
    try:
        store = stores(f"sqlite:{path}")
        store.record(record("bbbb0001"))
        assert store.flush(DEADLINE)
        made = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    finally:
        os.umask(old_umask)
    # The writer's connection is open: WAL's own files exist beside the database.
    assert made == {
        "agent.sock.history.sqlite3": 0o600,
        "agent.sock.history.sqlite3-wal": 0o600,
        "agent.sock.history.sqlite3-shm": 0o600,
    }
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_file_planted_at_the_path_is_refused(
    tmp_path: Path, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    """A link planted where the history goes (or a file others may write) is not written
    through: the store is unavailable, saying why, once; the link's target is untouched."""
    target = tmp_path / "target"
    target.write_text("precious")
    link = tmp_path / "history.sqlite3"
    link.symlink_to(target)
    loose = tmp_path / "loose.sqlite3"
    loose.touch(mode=0o666)
    loose.chmod(0o666)
    with capture_logs() as logs:
        via_link = stores(f"sqlite:{link}")
        via_loose = stores(f"sqlite:{loose}")
        for store in (via_link, via_loose):
            store.record(record("cccc0001"))
        wait_until(lambda: len(events(logs, "history.unavailable")) == 2, what="both refused")
    errors = sorted(entry["error"] for entry in events(logs, "history.unavailable"))
    assert errors == [
        f"PermissionError: {link} is not a regular file: the history is not written there",
        f"PermissionError: {loose} may be written by others (mode 0666; fix it with chmod 600 "
        f"{loose}): the history is not written there",
    ]
    assert target.read_text() == "precious"


# -- what a finished job leaves --------------------------------------------------------------


def ok(revision: str = "head") -> str:
    return revision


def ok_locked() -> None: ...


def boom() -> None:
    raise ValueError("no such revision\nsecond line")


def quiet() -> None:
    raise KeyError("")


def slow() -> None: ...


def plain(secret: str) -> None: ...


def logged(secret: str) -> None: ...


def recorded(revision: str) -> None: ...


def jobs_of(**tasks: dict[str, Any]) -> tuple[JobTable, Callable[..., Job]]:
    """A job table running these module-level functions as tasks (name: task options), and
    a function that runs one by name, inline, with the audit fields given (or, *start*
    False, only creates its job)."""
    registry = Registry()
    table = JobTable(MemoryLocks())
    for name, options in tasks.items():
        registry.add(globals()[name], **options)

    def run(name: str, *args: Any, start: bool = True, **audit: Any) -> Job:
        found = registry.get(f"{__name__}.{name}")
        assert found is not None
        job = table.create(found, "uid=1000 pid=4242")
        job.audit = {"identity": None, "argument_sizes": {}, **audit}
        if start:
            with contextlib.suppress(Busy):  # a busy lock ends the job: its record is checked
                table.start(job, args, {}, inline=True)
        return job

    return table, run


def test_the_record_of_each_way_a_job_ends() -> None:
    table, run = jobs_of(
        ok={}, boom={}, quiet={}, ok_locked={"lock": "migrations"}, slow={"timeout": 0.5}
    )
    succeeded = run("ok", "abc", identity="ci", argument_sizes={"revision": 5})
    rec = _history.finished(succeeded)
    assert rec[:3] == (succeeded.id, f"{__name__}.ok", "uid=1000 pid=4242")
    assert (rec.identity, rec.state, rec.exit_code, rec.error) == ("ci", "succeeded", 0, None)
    assert rec.started == succeeded.started_at
    assert succeeded.finished_at is not None
    assert rec.duration == pytest.approx(succeeded.finished_at - succeeded.started_at)
    assert (rec.argument_sizes, rec.arguments, rec.trace_id) == ({"revision": 5}, None, None)

    failed = _history.finished(run("boom"))
    assert (failed.state, failed.exit_code) == ("failed", 1)
    assert failed.error == "ValueError: no such revision"  # the first line only
    assert _history.finished(run("quiet")).error == "KeyError: ''"

    lease = table.locks.acquire("migrations", Holder("x", "t", "c", 0.0), 0)
    busy = _history.finished(run("ok_locked"))
    lease.release()
    assert (busy.state, busy.exit_code) == ("failed", 7)
    assert str(busy.error).startswith("busy: lock 'migrations' is held")

    timed_out = run("slow", start=False)
    assert timed_out.expire()
    assert _history.finished(timed_out)[6:9] == (
        "timed_out",
        4,
        f"timeout: {__name__}.slow exceeded its timeout of 0.5s; cancellation was requested",
    )
    cancelled = run("boom", start=False)
    cancelled.finish("cancelled", error={"kind": "task_failed", "type": "CancelledError"})
    assert _history.finished(cancelled)[6:9] == ("cancelled", 1, "CancelledError")
    long = run("boom", start=False)
    long.finish("failed", error={"kind": "task_failed", "type": "E", "message": "x" * 9999})
    assert len(_history.finished(long).error or "") == _history.MAX_ERROR_LINE


def test_argument_values_only_for_tasks_that_opt_in() -> None:
    """``record_args`` is a switch of its own: ``log_values`` (the audit log) does not put
    values in the history, and values over MAX_ARGUMENTS_BYTES stay out (sizes stay in)."""
    _, run = jobs_of(plain={}, logged={"log_values": True}, recorded={"record_args": True})
    small = {"argument_sizes": {"x": 6}}
    for name, arguments, audit, kept in (
        ("plain", {"secret": "hunter2"}, small, None),
        ("logged", {"secret": "hunter2"}, small, None),
        ("recorded", {"revision": "head"}, small, {"revision": "head"}),
        ("recorded", {"revision": "x" * 5000}, {"argument_sizes": {"revision": 5002}}, None),
    ):
        rec = _history.finished(run(name, "value", **audit), arguments)
        assert rec.arguments == kept, name
        assert rec.argument_sizes == audit["argument_sizes"]


def test_the_task_decorator_takes_record_args(monkeypatch: pytest.MonkeyPatch) -> None:
    from app_agent import _registry

    fresh = Registry()  # the process's registry holds other tests' tasks: leave it alone
    monkeypatch.setattr(_registry, "registry", fresh)
    assert task(record_args=True)(recorded) is recorded
    found = fresh.get(f"{__name__}.recorded")
    assert found is not None
    assert (found.record_args, found.log_values) == (True, False)


# -- queries ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.pg)])
def any_store(
    request: pytest.FixtureRequest, tmp_path: Path, stores: Callable[..., HistoryStore]
) -> Callable[..., HistoryStore]:
    """Opens stores of one kind on one database: SQLite, then the real PostgreSQL."""
    if request.param == "sqlite":
        spec = f"sqlite:{tmp_path / 'h.sqlite3'}"
    else:
        spec = request.getfixturevalue("pg_database")
    return lambda **options: stores(spec, **options)


def test_queries_filter_and_order_newest_first(any_store: Callable[..., HistoryStore]) -> None:
    store = any_store()
    other_app = any_store(app="otherapp")
    now = time.time()
    rows = [
        record("j1", now - 7200, task="myapp.tasks.migrate", identity="deployer"),
        record("j2", now - 3000, task="myapp.tasks.warm_cache"),
        record("j3", now - 1000, task="myapp.tasks.migrate", identity="ci"),
        record("j4", now - 10, task="myapp.jobs.Reindex"),
        record("j5", now - 5, task="myapp.tasks.100%_done"),
        record("j6", now - 4, task="myapp.tasks.x_y"),
        record("j7", now - 3, task="myapp.tasks.[a]"),
    ]
    for row in rows:
        store.record(row)
    other_app.record(record("o1", now - 1, task="myapp.tasks.migrate"))
    assert store.flush(DEADLINE)
    assert other_app.flush(DEADLINE)

    def jobs(**query: Any) -> list[str]:
        return [entry["job"] for entry in store.query(**query)]

    assert jobs() == ["j7", "j6", "j5", "j4", "j3", "j2", "j1"]  # this app's only
    assert jobs(since=now - 3600) == ["j7", "j6", "j5", "j4", "j3", "j2"]
    assert jobs(since=times.parse_since("10m", now=now)) == ["j7", "j6", "j5", "j4"]
    assert jobs(task="myapp.tasks.migrate") == ["j3", "j1"]
    assert jobs(task="myapp.tasks.*") == ["j7", "j6", "j5", "j3", "j2", "j1"]
    assert jobs(task="*.?eindex") == ["j4"]
    assert jobs(task="*.reindex") == []  # case matters, as in the access file's patterns
    assert jobs(task="myapp.tasks.100%_done") == ["j5"]  # % and _ are not wildcards
    assert jobs(task="myapp.tasks.1%") == []
    assert jobs(task="myapp.tasks.x?y") == ["j6"]
    assert jobs(task="myapp.tasks._") == []
    assert jobs(task="myapp.tasks.[a]") == ["j7"]  # a bracket stands for itself
    assert jobs(identity="ci") == ["j3"]
    assert jobs(identity="deployer", task="*migrate", since=now - 9000) == ["j1"]
    assert jobs(limit=2) == ["j7", "j6"]
    assert [entry["job"] for entry in other_app.query()] == ["o1"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": 0}, "limit must be a whole number from 1 to 10,000, not 0"),
        ({"limit": 10_001}, "limit must be a whole number from 1 to 10,000, not 10001"),
        ({"limit": "5"}, "limit must be a whole number from 1 to 10,000, not '5'"),
        ({"limit": True}, "limit must be a whole number from 1 to 10,000, not True"),
        ({"since": "1h"}, "since must be a time in seconds since the epoch, not '1h'"),
        ({"since": float("nan")}, "since must be a time in seconds since the epoch, not nan"),
        ({"task": ""}, "task must be a non-empty string, not ''"),
        ({"identity": 3}, "identity must be a non-empty string, not 3"),
    ],
)
def test_bad_queries_are_refused(
    tmp_path: Path, stores: Callable[..., HistoryStore], query: dict[str, Any], message: str
) -> None:
    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        store.query(**query)


def test_history_off_says_so_when_read() -> None:
    store = _history.open_store("off", app=APP, node=NODE)
    store.record(record("dddd0001"))  # goes nowhere, raises nothing
    with pytest.raises(HistoryUnavailable) as caught:
        store.query()
    assert str(caught.value) == (
        "this agent keeps no job history (history is off: start the app with "
        "history='sqlite:PATH' or 'postgresql://...', or set RPCCTL_HISTORY)"
    )


# -- retention -------------------------------------------------------------------------------


def test_retention_keeps_the_newest_records(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}", keep=5)
    other = stores(f"sqlite:{tmp_path / 'h.sqlite3'}", app="otherapp", keep=5)
    now = time.time()
    for i in range(3):
        other.record(record(f"other{i}", now - 1000 + i))
    assert other.flush(DEADLINE)
    for i in range(12):
        store.record(record(f"job{i:02d}", now - 100 + i))
    assert store.flush(DEADLINE)
    assert [e["job"] for e in store.query()] == [f"job{i:02d}" for i in (11, 10, 9, 8, 7)]
    assert len(other.query()) == 3  # each app keeps its own


def test_retention_forgets_records_older_than_the_days_kept(
    tmp_path: Path, stores: Callable[..., HistoryStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_history, "PRUNE_INTERVAL", 0.0)  # by age at every write, not hourly
    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}", days=1)
    now = time.time()
    for i, age in enumerate((3 * 86400, 2 * 86400, 86400 + 60, 3600, 60)):
        store.record(record(f"job{i}", now - age))
    assert store.flush(DEADLINE)
    assert [e["job"] for e in store.query()] == ["job4", "job3"]


def test_pruning_runs_every_so_many_records_not_on_every_write(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}", keep=100)  # prunes every 10 records
    prunes: list[bool] = []
    real = store._database.write

    def watched(rows: list[dict[str, Any]], prune: Any) -> None:
        prunes.append(prune is not None)
        real(rows, prune)

    store._database.write = watched  # type: ignore[method-assign]
    for i in range(25):
        store.record(record(f"job{i:02d}"))
        assert store.flush(DEADLINE)  # one write per record
    # The first write prunes (the store may have been down for days), then every 10th.
    assert [i for i, pruned in enumerate(prunes) if pruned] == [0, 10, 20]


# -- the spec and the start options -----------------------------------------------------------

FORMS = "expected sqlite:PATH, postgresql://USER@HOST/DATABASE or off"


def test_specs_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    resolve = _history.resolve
    assert resolve(None, "/run/a.sock.history.sqlite3") == "sqlite:/run/a.sock.history.sqlite3"
    assert resolve("", None) == "off"
    assert resolve(None, None) == "off"
    assert resolve(" OFF ", "/x") == "off"
    assert resolve("sqlite:h.sqlite3", None) == f"sqlite:{tmp_path}/h.sqlite3"
    assert resolve("sqlite:/var/lib/h.db", None) == "sqlite:/var/lib/h.db"
    assert resolve("sqlite:///var/lib/h.db", None) == "sqlite:/var/lib/h.db"
    for url in (
        "postgresql://app@db/ops",
        "postgres://app:pw@db:5433/ops",
        "postgresql+psycopg2://app@db/ops?sslmode=require",
    ):
        assert resolve(url, None) == url


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mysql://u@h/db", f"bad history store 'mysql://u@h/db': {FORMS} (start(history=) or "),
        ("mysql://u:hunter2@h/db", "bad history store 'mysql://u:***@h/db'"),
        ("sqlite:", f"bad history store 'sqlite:': the SQLite path is empty ({FORMS})"),
        ("sqlite://", "bad history store 'sqlite://': the SQLite path is empty"),
        ("file:/tmp/h", "bad history store 'file:/tmp/h': "),
        ("postgresql:", "bad history store 'postgresql:': "),
        ("/var/lib/h.db", "bad history store '/var/lib/h.db': "),
        (42, f"history must be a string ({FORMS[9:]}), not 42"),
    ],
)
def test_bad_specs_name_the_accepted_forms(spec: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        _history.resolve(spec, None)
    assert str(caught.value).startswith(message)
    assert "hunter2" not in str(caught.value)


def test_the_default_store_sits_beside_a_unix_socket_and_tcp_has_none(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RPCCTL_HISTORY", "RPCCTL_HISTORY_KEEP", "RPCCTL_HISTORY_DAYS", "RPCCTL_NODE"):
        monkeypatch.delenv(name, raising=False)
    unix = config.load(f"unix:{short_tmp}/agent.sock")
    assert unix.history == f"sqlite:{short_tmp}/agent.sock.history.sqlite3"
    assert (unix.history_keep, unix.history_days) == (10_000, 30.0)
    assert config.load("tcp://127.0.0.1:0", cookie="c").history == "off"
    monkeypatch.setenv("RPCCTL_HISTORY", "postgresql://ops@db/ops")
    monkeypatch.setenv("RPCCTL_HISTORY_KEEP", "500")
    monkeypatch.setenv("RPCCTL_HISTORY_DAYS", "7.5")
    tcp = config.load("tcp://127.0.0.1:0", cookie="c")
    assert (tcp.history, tcp.history_keep, tcp.history_days) == (
        "postgresql://ops@db/ops",
        500,
        7.5,
    )
    given = config.load(f"unix:{short_tmp}/a.sock", history="off", history_keep=3, history_days=1)
    assert (given.history, given.history_keep, given.history_days) == ("off", 3, 1.0)


@pytest.mark.parametrize(
    ("options", "environment", "message"),
    [
        ({"history": "redis://x"}, {}, "bad history store 'redis://x': "),
        ({}, {"RPCCTL_HISTORY": "sqlite:"}, "bad history store 'sqlite:': the SQLite path"),
        ({"history_keep": 0}, {}, "history_keep must be a whole number of records, at least 1"),
        ({"history_keep": 2.5}, {}, "history_keep must be a whole number of records"),
        ({}, {"RPCCTL_HISTORY_KEEP": "lots"}, "RPCCTL_HISTORY_KEEP='lots': expected a number"),
        ({"history_days": 0}, {}, "history_days must be a positive number of days, not 0"),
        ({"history_days": "7"}, {}, "history_days must be a positive number of days, not '7'"),
        ({}, {"RPCCTL_HISTORY_DAYS": "inf"}, "history_days must be a positive number of days"),
        ({}, {"RPCCTL_HISTORY_DAYS": "1w"}, "RPCCTL_HISTORY_DAYS='1w': expected a number of"),
    ],
)
def test_bad_history_options_stop_the_start(
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: dict[str, Any],
    environment: dict[str, str],
    message: str,
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        app_agent.start(node=f"unix:{short_tmp}/agent.sock", **options)
    assert str(caught.value).startswith(message)
    assert app_agent.current() is None


def test_a_postgresql_url_naming_a_missing_driver_is_a_configuration_error() -> None:
    pytest.importorskip("sqlalchemy")
    with pytest.raises(ConfigurationError) as caught:
        _history.open_store("postgresql+nosuchdriver://u@h/db", app=APP, node=NODE)
    assert str(caught.value).startswith("PostgreSQL history stores: bad database URL (")


# -- --since ---------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds_ago"),
    [("30m", 1800), ("1h", 3600), ("1.5h", 5400), ("2d", 172800), ("1w", 604800), ("90s", 90)],
)
def test_since_as_how_long_ago(text: str, seconds_ago: float) -> None:
    assert times.parse_since(text, now=NOW) == NOW - seconds_ago
    assert times.parse_since(f" {text} ") == pytest.approx(time.time() - seconds_ago, abs=5)


def test_since_as_an_iso_time() -> None:
    utc = datetime.UTC
    assert (
        times.parse_since("2026-11-26T11:00:00Z")
        == datetime.datetime(2026, 11, 26, 11, tzinfo=utc).timestamp()
    )
    assert times.parse_since("2026-11-26T13:00+02:00") == times.parse_since("2026-11-26T11:00Z")
    # No offset: the operator's local time, as journalctl reads it.
    local = datetime.datetime(2026, 11, 26, 11, 30).timestamp()
    assert times.parse_since("2026-11-26T11:30") == local
    assert times.parse_since("2026-11-26 11:30") == local
    assert times.parse_since("2026-11-26") == datetime.datetime(2026, 11, 26).timestamp()


@pytest.mark.parametrize(
    "text", ["", "  ", "abc", "1y", "-1h", "0h", "0", "90", "2026", "1e5h", "9" * 400 + "d",
             "2026-13-01", "2026-11-26T25:00", "yesterday", "1h ago", "h"],
)  # fmt: skip
def test_bad_since_says_what_is_accepted(text: str) -> None:
    message = (
        f"bad time {text!r}: expected how long ago (30m, 1h, 2d, 1w) or an ISO 8601 time "
        "(2026-11-26, 2026-11-26T11:00, 2026-11-26T11:00:00Z)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        times.parse_since(text)


def test_durations_share_the_parser() -> None:
    assert times.parse_duration("90") == 90.0
    assert times.parse_duration("1w") == 604800.0
    with pytest.raises(ValueError, match=r"^bad duration '9{400}d': expected a positive number"):
        times.parse_duration("9" * 400 + "d")


# -- another user ----------------------------------------------------------------------------


@needs_root
def test_another_users_history_file_is_not_written(
    run_tmp: Path, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    """A file at the path that belongs to someone else (planted by a forked child that
    became nobody, in a directory it may write) is refused, not adopted."""
    shared = run_tmp / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path = shared / "history.sqlite3"
    child = as_user(NOBODY, lambda: path.touch(mode=0o600))
    assert os.waitpid(child, 0)[1] == 0
    with capture_logs() as logs:
        store = stores(f"sqlite:{path}")
        store.record(record("job1"))
        wait_until(lambda: events(logs, "history.unavailable"), what="the refusal")
    assert events(logs, "history.unavailable")[0]["error"] == (
        f"PermissionError: {path} belongs to uid {NOBODY}, not to this app's user (uid 0): "
        "the history is not written there"
    )
    assert path.stat().st_size == 0
