"""The durable history when its store is down, locked or full: calls go on, the trouble is
logged once, records wait in a bounded queue and are written once the store is back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from history_support import events, record, writes_counted
from structlog.testing import capture_logs

from app_agent._jobs import history as _history
from app_agent._jobs import history_db
from app_agent._jobs.history import HistoryStore
from conftest import DEADLINE, wait_until

# -- a store that is down, locked or full ----------------------------------------------------


class Unwritable:
    """A directory this process cannot write, and the way to make it writable again: a
    read-only tmpfs for root (who ignores permissions), a 0500 directory for anyone else."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = False

    def __enter__(self) -> Unwritable:
        self.path.mkdir()
        if os.geteuid() == 0:
            self._mount("-o", "size=4m,mode=0700")
            self.mounted = True
            self._mount("-o", "remount,ro")
        else:
            self.path.chmod(0o500)
        return self

    def _mount(self, *options: str) -> None:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", *options, "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"root, but cannot mount a tmpfs here: {done.stderr.strip()}")

    def make_writable(self) -> None:
        if self.mounted:
            self._mount("-o", "remount,rw")
        else:
            self.path.chmod(0o700)

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], None]]:
    """A 256 KiB tmpfs (root only): a disk that fills up; calling the fixture's value with a
    size grows it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small filesystem")
    path = tmp_path / "small"
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def grow(size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    try:
        yield grow
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_sqlite_in_a_read_only_directory_is_logged_once_then_recovers(
    tmp_path: Path, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    with Unwritable(tmp_path / "ro") as directory, capture_logs() as logs:
        store = stores(f"sqlite:{directory.path / 'history.sqlite3'}")
        attempts = writes_counted(store)
        for i in range(3):
            store.record(record(f"job{i}"))  # never raises
        wait_until(lambda: len(attempts) >= 5, what="the writer to retry a few times")
        store.record(record("job3"))
        assert not (directory.path / "history.sqlite3").exists()
        assert len(events(logs, "history.unavailable")) == 1
        assert events(logs, "history.unavailable")[0]["store"] == store.spec
        directory.make_writable()
        assert store.flush(DEADLINE)
        found = sorted(e["job"] for e in store.query())
    assert found == ["job0", "job1", "job2", "job3"]
    assert len(events(logs, "history.unavailable")) == 1
    back = events(logs, "history.available_again")
    assert [entry["dropped"] for entry in back] == [0]


def test_sqlite_whose_directory_appears_later_recovers(
    tmp_path: Path, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    missing = tmp_path / "not-yet"
    with capture_logs() as logs:
        store = stores(f"sqlite:{missing / 'history.sqlite3'}")
        store.record(record("job0"))
        wait_until(lambda: events(logs, "history.unavailable"), what="the store down")
        missing.mkdir()
        assert store.flush(DEADLINE)
    assert events(logs, "history.unavailable")[0]["error"].startswith("FileNotFoundError")
    assert len(events(logs, "history.available_again")) == 1
    assert [e["job"] for e in store.query()] == ["job0"]


def test_a_full_disk_is_logged_once_and_the_history_resumes_when_there_is_room(
    small_tmpfs: Callable[[str], None],
    tmp_path: Path,
    stores: Callable[..., HistoryStore],
    fast_retries: None,
) -> None:
    path = tmp_path / "small" / "history.sqlite3"
    with capture_logs() as logs:
        store = stores(f"sqlite:{path}")
        big = "x" * _history.MAX_ERROR_LINE
        count = 300  # some 800 KiB of records
        for i in range(count):
            store.record(record(f"job{i:04d}", error=big, trace_id="t" * 2000))
        wait_until(lambda: events(logs, "history.unavailable"), what="the disk full")
        error = events(logs, "history.unavailable")[0]["error"]
        small_tmpfs("16m")
        assert store.flush(DEADLINE)
    assert "full" in error, error
    assert len(events(logs, "history.unavailable")) == 1
    assert len(events(logs, "history.available_again")) == 1
    assert len(store.query(limit=10_000)) == count  # the queue waited: nothing lost


def test_a_locked_database_bounds_the_queue_and_counts_what_it_drops(
    tmp_path: Path,
    stores: Callable[..., HistoryStore],
    monkeypatch: pytest.MonkeyPatch,
    fast_retries: None,
) -> None:
    """Another process holds the SQLite file's write lock: the writer waits out its busy
    timeout, the queue fills to its bound, later records are dropped and counted, and the
    count is logged when the store is back."""
    monkeypatch.setattr(_history, "QUEUE_SIZE", 30)
    monkeypatch.setattr(_history, "BATCH", 10)
    monkeypatch.setattr(history_db, "SQLITE_BUSY_TIMEOUT", 0.05)
    path = tmp_path / "h.sqlite3"
    with capture_logs() as logs:
        store = stores(f"sqlite:{path}")
        store.record(record("first"))
        assert store.flush(DEADLINE)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # the lock a long write by another process takes
        store.record(record("while-locked"))
        wait_until(lambda: events(logs, "history.unavailable"), what="the lock noticed")
        for i in range(100):
            store.record(record(f"job{i:03d}"))
        assert store._queue.qsize() <= 30
        dropped = store.dropped
        assert dropped >= 100 + 1 - 30 - 10  # at most the queue and one batch wait
        holder.execute("ROLLBACK")
        holder.close()
        assert store.flush(DEADLINE)
    assert "database is locked" in events(logs, "history.unavailable")[0]["error"]
    (back,) = events(logs, "history.available_again")
    assert back["dropped"] == dropped
    written = store.query(limit=1000)
    assert len(written) + dropped == 102


def test_a_record_the_database_refuses_does_not_hold_back_the_others(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    with capture_logs() as logs:
        store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}")
        store.record(record("good1"))
        store.record(record("nan", started=float("nan")))  # SQLite stores NaN as NULL
        store.record(record("good2", caller="nul\x00 and a lone \udc80 surrogate"))
        assert store.flush(DEADLINE)
    assert sorted(e["job"] for e in store.query()) == ["good1", "good2"]
    assert store.written == 2
    assert store.query(limit=1)[0]["caller"] in ("nul\ufffd and a lone \\udc80 surrogate",)
    (refused,) = events(logs, "history.refused")
    assert refused["count"] == 1
    assert refused["first"].startswith("job nan: IntegrityError")
    assert not events(logs, "history.unavailable")


def test_close_writes_what_is_queued_and_drops_later_records(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    path = tmp_path / "h.sqlite3"
    store = stores(f"sqlite:{path}")
    for i in range(500):
        store.record(record(f"job{i:03d}"))
    store.close()
    assert store._writer is not None
    assert not store._writer.is_alive()
    store.record(record("after-close"))
    assert store.dropped == 1
    assert len(stores(f"sqlite:{path}").query(limit=1000)) == 500


def test_close_with_the_store_down_gives_up_at_once_and_says_what_was_lost(
    tmp_path: Path, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    with capture_logs() as logs:
        store = stores(f"sqlite:{tmp_path / 'missing' / 'h.sqlite3'}")
        for i in range(7):
            store.record(record(f"job{i}"))
        wait_until(lambda: events(logs, "history.unavailable"), what="the store down")
        store.close(timeout=DEADLINE)
    assert store._writer is not None
    assert not store._writer.is_alive()
    (lost,) = events(logs, "history.lost")
    assert (lost["count"], lost["reason"]) == (7, "the store is unavailable")


def test_a_forked_child_leaves_the_parents_store_alone(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    """A child forked while the writer's connection is open (as a pre-fork server's workers
    are) writes nothing through it, starts no writer, and the parent goes on."""
    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}")
    store.record(record("parent1"))
    assert store.flush(DEADLINE)
    assert store._database._connection is not None  # type: ignore[attr-defined]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            store.abandon_in_child()
            store.record(record("child"))
            alone = (
                store.dropped == 1
                and store._database._connection is None  # type: ignore[attr-defined]
                and not [t for t in threading.enumerate() if t.name == "rpcctl-history"]
            )
            status = 0 if alone else 1
        finally:
            os._exit(status)
    assert os.waitpid(pid, 0)[1] == 0
    store.record(record("parent2"))
    assert store.flush(DEADLINE)
    assert [e["job"] for e in store.query()] == ["parent2", "parent1"]


def test_the_writer_exits_when_idle_and_the_next_record_starts_one(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    def writers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "rpcctl-history"]

    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}")
    store._idle = 0.05
    assert writers() == []  # opening starts nothing
    store.record(record("job1"))
    assert store.flush(DEADLINE)
    wait_until(lambda: writers() == [], what="the idle writer to exit")
    store.record(record("job2"))
    assert store.flush(DEADLINE)
    assert [e["job"] for e in store.query()] == ["job2", "job1"]


def test_records_from_many_threads_are_all_written(
    tmp_path: Path, stores: Callable[..., HistoryStore]
) -> None:
    store = stores(f"sqlite:{tmp_path / 'h.sqlite3'}")
    store._idle = 0.001  # the writer comes and goes while threads record

    def work(n: int) -> None:
        for i in range(100):
            store.record(record(f"t{n}-{i}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert store.flush(DEADLINE)
    assert store.dropped == 0
    assert len(store.query(limit=1000)) == 800
