"""The durable history on PostgreSQL: one table shared by replicas, created on first use by
several at once, a database that goes down and comes back."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import pytest
from history_support import events, record, writes_counted
from structlog.testing import capture_logs

from app_agent._jobs.history import HistoryStore, HistoryUnavailable
from conftest import DEADLINE, wait_until

# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.mark.pg
@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2"])
def test_two_replicas_share_one_table_and_each_sees_both(
    pg_database: str, stores: Callable[..., HistoryStore], driver: str
) -> None:
    url = driver + "://" + pg_database.partition("://")[2]
    web1 = stores(url, node="unix:/run/web-1/agent.sock")
    web2 = stores(url, node="unix:/run/web-2/agent.sock")
    now = time.time()
    web1.record(record("w1-a", now - 3))
    web2.record(record("w2-a", now - 2))
    web1.record(record("w1-b", now - 1, state="failed", exit_code=1, error="E: x"))
    assert web1.flush(DEADLINE)
    assert web2.flush(DEADLINE)
    for store in (web1, web2):
        found = store.query()
        assert [(e["job"], e["node"]) for e in found] == [
            ("w1-b", "unix:/run/web-1/agent.sock"),
            ("w2-a", "unix:/run/web-2/agent.sock"),
            ("w1-a", "unix:/run/web-1/agent.sock"),
        ]
    assert web2.query(limit=1)[0]["error"] == "E: x"


@pytest.mark.pg
def test_replicas_creating_the_table_at_once_all_succeed(
    pg_database: str, stores: Callable[..., HistoryStore]
) -> None:
    """Two concurrent CREATE TABLE IF NOT EXISTS race on PostgreSQL's catalog (one fails
    with a unique violation, and its write must be tried again); the store's advisory lock
    makes them take turns: every replica's first write succeeds at the first attempt."""
    replicas = [stores(pg_database, node=f"unix:/run/web-{i}.sock") for i in range(6)]
    attempts = [writes_counted(store) for store in replicas]
    start = threading.Barrier(len(replicas))
    flushed: list[bool] = []

    def first_write(store: HistoryStore, i: int) -> None:
        start.wait(DEADLINE)
        store.record(record(f"job{i}"))
        flushed.append(store.flush(DEADLINE))

    with capture_logs() as logs:
        threads = [
            threading.Thread(target=first_write, args=(store, i))
            for i, store in enumerate(replicas)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE)
    assert flushed == [True] * 6
    assert attempts == [[1]] * 6
    assert not events(logs, "history.unavailable")
    assert not events(logs, "history.refused")
    assert len(replicas[0].query()) == 6


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


@pytest.mark.pg
def test_postgresql_down_is_logged_once_and_calls_go_on(
    pg_server: str, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{closed_port()}/test"
    with capture_logs() as logs:
        store = stores(url)
        attempts = writes_counted(store)
        for i in range(5):
            store.record(record(f"job{i}"))  # returns at once, raises nothing
        wait_until(lambda: len(attempts) >= 4, what="a few attempts")
        with pytest.raises(HistoryUnavailable) as caught:
            store.query()
        store.close(timeout=DEADLINE)
    (down,) = events(logs, "history.unavailable")
    assert down["error"].startswith("OperationalError: ")
    assert down["store"] == url.replace("s3cret", "***")
    message = str(caught.value)
    assert message.startswith(f"the history store {down['store']} cannot be read: ")
    assert "\n" not in message
    assert all("s3cret" not in repr(entry) for entry in logs)
    assert events(logs, "history.lost")[0]["count"] == 5


class Relay:
    """A TCP relay to PostgreSQL that the test can cut (every connection reset, nothing
    listening) and restore on the same port: what a database restart looks like to its
    clients."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.port = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.restore()

    def restore(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the other way's end, or the cut
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):  # already shut
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):  # its pump ended it already
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.pg
def test_postgresql_restart_the_writer_reconnects_and_nothing_is_lost(
    pg_database: str, stores: Callable[..., HistoryStore], fast_retries: None
) -> None:
    import sqlalchemy as sa

    real = sa.make_url(pg_database)
    relay = Relay(real.port or 5432)
    try:
        url = real.set(drivername="postgresql", port=relay.port)
        with capture_logs() as logs:
            store = stores(url.render_as_string(hide_password=False))
            store.record(record("before"))
            assert store.flush(DEADLINE)  # a session is open, kept in the pool
            relay.cut()
            for i in range(3):
                store.record(record(f"during{i}"))
            wait_until(lambda: events(logs, "history.unavailable"), what="the store down")
            relay.restore()
            assert store.flush(DEADLINE)
            store.record(record("after"))
            assert store.flush(DEADLINE)
        assert len(events(logs, "history.unavailable")) == 1
        assert len(events(logs, "history.available_again")) == 1
        assert sorted(e["job"] for e in store.query()) == [
            "after",
            "before",
            "during0",
            "during1",
            "during2",
        ]
    finally:
        relay.cut()


@pytest.mark.pg
def test_a_table_dropped_under_the_store_is_made_again(
    pg_database: str, stores: Callable[..., HistoryStore]
) -> None:
    import sqlalchemy as sa

    store = stores(pg_database)
    store.record(record("job1"))
    assert store.flush(DEADLINE)
    admin = sa.create_engine(pg_database)
    try:
        with admin.begin() as connection:
            connection.execute(sa.text("DROP TABLE rpcctl_history"))
    finally:
        admin.dispose()
    with capture_logs() as logs:
        store.record(record("job2"))
        assert store.flush(DEADLINE)
    assert [e["job"] for e in store.query()] == ["job2"]
    assert not events(logs, "history.refused")


@pytest.mark.pg
def test_postgresql_takes_any_text(pg_database: str, stores: Callable[..., HistoryStore]) -> None:
    store = stores(pg_database)
    store.record(record("nul", error="E: a\x00b", caller="lone \udc80"))
    assert store.flush(DEADLINE)
    (entry,) = store.query()
    assert (entry["error"], entry["caller"]) == ("E: a\ufffdb", "lone \\udc80")
