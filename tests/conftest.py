"""Shared fixtures: real agent processes, the real rpcctl executable, an in-process agent."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from app_agent._jobs import history as _history
from app_agent._jobs.history import HistoryStore

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
EXAMPLE = ROOT / "examples" / "myapp"
# Generous by default, tunable for slow machines: a deadline, never a fixed sleep.
DEADLINE = float(os.environ.get("RPCCTL_TEST_DEADLINE", "20"))

sys.path.insert(0, str(APPS))


def rpcctl_executable() -> str:
    exe = Path(sys.executable).parent / "rpcctl"
    if not exe.exists():
        found = shutil.which("rpcctl")
        if found is None:
            pytest.fail("the rpcctl executable is not installed (pip install -e .)")
        return found
    return str(exe)


EXIT_CODES = {
    "ok": 0,
    "task_failed": 1,
    "usage": 2,
    "unreachable": 3,
    "timeout": 4,
    "auth": 5,
    "no_such_task": 6,
    "busy": 7,
    "unhealthy": 8,
    "interrupted": 130,
}
"""The README's exit-code table: the one the tests check against."""


def run_rpcctl(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the real executable; its environment has no RPCCTL_NODE unless *env* gives one."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    full_env.update(env or {})
    return subprocess.run(
        [rpcctl_executable(), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(autouse=True)
def _structlog_unconfigured() -> Iterator[None]:
    """capture_logs() leaves structlog marked as configured; start every test unconfigured."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: UNIX socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rpcctl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_tmp() -> Iterator[Path]:
    """A short temporary directory under /run, whose parents only root can write (unlike
    /tmp's): where a socket directory owned by another user can be trusted."""
    if not os.access("/run", os.W_OK):
        pytest.skip("needs a writable /run")
    path = Path(tempfile.mkdtemp(prefix="rpcctl-", dir="/run"))
    path.chmod(0o755)  # another uid must reach the directories made below
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


NOBODY = 65534
"""The uid tests act as when they need another user."""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")


class _Drain:
    """Reads a pipe on a thread, line by line, so the process never blocks on a full pipe
    and readers wait on lines, not on a descriptor whose data a text buffer already took."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self._seen = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        with contextlib.suppress(ValueError, OSError):
            for line in pipe:
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def next_line(self, deadline: float) -> str | None:
        """The next line not yet returned, waiting until *deadline*; None at the end."""
        with self._cond:
            while self._seen >= len(self.lines):
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)
            self._seen += 1
            return self.lines[self._seen - 1]

    def rest(self, timeout: float) -> str:
        """What next_line has not returned yet, once the pipe has closed."""
        self._thread.join(timeout)
        with self._cond:
            return "".join(self.lines[self._seen :])

    def text(self, timeout: float) -> str:
        """Everything read, once the pipe has closed (or *timeout* passed)."""
        self._thread.join(timeout)
        with self._cond:
            return "".join(self.lines)


class AppProcess:
    """A real application process with an embedded agent; always stopped on exit."""

    def __init__(
        self,
        argv: list[str],
        node: str,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        ready_line: str | None = "READY",
    ) -> None:
        self.node = node
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
        self.env.update({"RPCCTL_NODE": node, **(env or {})})
        self.proc = subprocess.Popen(
            argv,
            env=self.env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stdout = _Drain(self.proc.stdout)
        self._stderr = _Drain(self.proc.stderr)
        self.stdout_lines: list[str] = []
        if ready_line is not None:
            self.wait_for_line(ready_line)

    def wait_for_line(self, prefix: str, timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while (line := self._stdout.next_line(deadline)) is not None:
            self.stdout_lines.append(line)
            if line.startswith(prefix):
                return line
        self.stop()
        pytest.fail(f"app never printed {prefix!r}; stderr:\n{self.stderr()}")

    def rpcctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_rpcctl("-n", self.node, *args, timeout=timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        self.stop()
        return self._stderr.text(DEADLINE)

    def close(self) -> None:
        self.stop()
        self._stdout.text(DEADLINE)
        self._stderr.text(DEADLINE)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class Relay:
    """A TCP relay between a client and the agent that forwards the handshake faithfully and
    then lets *mutate* change what crosses, once the agent has admitted the client."""

    def __init__(
        self,
        target: str,
        to_agent: Callable[[bytes, socket.socket], bytes] | None = None,
        to_client: Callable[[bytes, socket.socket], bytes] | None = None,
    ) -> None:
        from app_agent import wire

        address = wire.parse_node(target)
        self.target = (address.host, address.port)
        self.to_agent = to_agent
        self.to_client = to_client
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.node = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.admitted = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        with client, socket.create_connection(self.target) as agent:
            upstream = threading.Thread(target=self._pump, args=(client, agent, True))
            upstream.start()
            self._pump(agent, client, False)
            upstream.join(DEADLINE)

    def _pump(self, src: socket.socket, dst: socket.socket, toward_agent: bool) -> None:
        lines = 0
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not toward_agent and not self.admitted.is_set():
                    lines += data.count(b"\n")
                    dst.sendall(data)
                    if lines >= 2:  # the challenge, then the agent's final answer
                        self.admitted.set()
                    continue
                mutate = self.to_agent if toward_agent else self.to_client
                if self.admitted.is_set() and mutate is not None:
                    data = mutate(data, dst)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def open_rpc(path: str) -> socket.socket:
    """An admitted rpc connection to the agent at UNIX socket *path* (no cookie): what
    follows is RPyC's."""
    from app_agent import wire
    from app_agent.wire import cookies

    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(DEADLINE)
    sock.connect(path)
    hello = {"rpcctl": wire.PROTOCOL_VERSION, "op": "rpc", "nonce": cookies.new_nonce()}
    sock.sendall(wire.encode_line(hello))
    answer = wire.decode_line(sock.recv(4096))
    assert answer["ok"] is True, answer
    return sock


def wait_until(condition: object, timeout: float = DEADLINE, what: str = "condition") -> None:
    """Poll *condition* (a callable) until it is true or fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    pytest.fail(f"timed out waiting for {what}")


SAMPLEAPP = [sys.executable, str(APPS / "sampleapp.py")]
"""The command that runs tests/apps/sampleapp.py (it prints READY once its agent listens)."""


def tcp_sample_app(cookie: str) -> AppProcess:
    """tests/apps/sampleapp.py on loopback TCP (port 0) with *cookie*; its node has the
    real port."""
    app = AppProcess(SAMPLEAPP, node="tcp://127.0.0.1:0", env={"RPCCTL_COOKIE": cookie})
    app.node = app.stdout_lines[-1].split()[1]  # READY <node>: the real port
    return app


@pytest.fixture
def sample_app(short_tmp: Path) -> Iterator[AppProcess]:
    """tests/apps/sampleapp.py running with its agent on a UNIX socket."""
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    """A short temporary directory shared by a module's tests (UNIX socket paths must stay
    under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rpcctl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_sample_app(module_tmp: Path) -> Iterator[AppProcess]:
    """One sampleapp for a whole module of read-mostly tests."""
    app = AppProcess(SAMPLEAPP, node=f"unix:{module_tmp}/run/agent.sock")
    try:
        yield app
    finally:
        app.close()


def start_myapp(
    workdir: Path,
    database_url: str | None = None,
    node: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> AppProcess:
    env = {
        "PYTHONPATH": str(EXAMPLE),
        "MYAPP_HTTP": "127.0.0.1:0",
        "RPCCTL_LOG_LEVEL": "debug",
        **(extra_env or {}),
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    app = AppProcess(
        [sys.executable, "-m", "myapp"],
        node=node or f"unix:{workdir}/run/myapp.sock",
        env=env,
        cwd=workdir,
        ready_line=None,
    )
    result = run_rpcctl("-n", app.node, "ping", "--wait", str(DEADLINE), env=extra_env)
    if result.returncode != 0:
        pytest.fail(f"myapp did not come up: {result.stderr}\n{app.stderr()}")
    return app


@pytest.fixture
def agent_in_process(short_tmp: Path) -> Iterator[object]:
    """An agent inside the test process itself, serving tests/apps/sampleapp.py's tasks."""
    import app_agent
    import sampleapp  # noqa: F401  (registers its tasks)

    agent = app_agent.start(node=f"unix:{short_tmp}/agent.sock", app="inproc")
    try:
        yield agent
    finally:
        agent.stop()


def as_user(uid: int, work: Callable[[], None]) -> int:
    """Run *work* in a forked child that has become *uid*; the child's pid. The child
    exits 0 when *work* returns, 1 when it raised."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            work()
            status = 0
        finally:
            os._exit(status)
    return pid


def popen_rpcctl(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real executable in the background (a long call, a follower, a Ctrl-C test); its
    environment has no RPCCTL_* variable unless *env* gives one, as for run_rpcctl."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [rpcctl_executable(), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )


def listed_jobs(app: AppProcess) -> list[dict[str, Any]]:
    """`rpcctl jobs --json` of *app*: its recent and running jobs, newest first."""
    import json

    result = app.rpcctl("jobs", "--json")
    assert result.returncode == 0, result.stderr
    listed: list[dict[str, Any]] = json.loads(result.stdout)["result"]
    return listed


# -- PostgreSQL: one probe for every test that needs the server --------------------------------

PG_ADMIN_URL = os.environ.get(
    "RPCCTL_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The PostgreSQL server's URL once it answers; the test is skipped, saying why, when no
    server does (failed instead with RPCCTL_REQUIRE_PG=1, as in CI)."""
    import sqlalchemy as sa

    engine = sa.create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        if os.environ.get("RPCCTL_REQUIRE_PG") == "1":
            pytest.fail(f"RPCCTL_REQUIRE_PG=1 but PostgreSQL does not answer: {exc}")
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN_URL}: {str(exc).splitlines()[0]}")
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def pg_database(pg_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database of its own, dropped afterwards."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(pg_server, isolation_level="AUTOCOMMIT")
    name = f"rpcctl_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(pg_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def agent_events(app: AppProcess, *names: str) -> list[dict[str, Any]]:
    """The agent's log events named *names* (all of them when none is named)."""
    log = [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]
    return [e for e in log if not names or e["event"] in names]


# The fixtures of the test families below use their helper modules, which import this
# module's helpers in turn: imported here, once everything above is defined.
from history_support import APP, NODE  # noqa: E402
from introspect_support import start_introapp  # noqa: E402
from runner_support import Release  # noqa: E402


@pytest.fixture
def release(short_tmp: Path) -> Iterator[Any]:
    made: list[Release] = []

    def make(
        hooks: dict[str, str | tuple[str, int]], toml: str = "", env: dict[str, str] | None = None
    ) -> Release:
        r = Release(short_tmp, hooks, toml, env)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture(scope="module")
def app(module_tmp: Path) -> Iterator[AppProcess]:
    """introapp with its agent on threads (no event loop)."""
    process = start_introapp(module_tmp, "sync")
    try:
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def loop_app(module_tmp: Path) -> Iterator[AppProcess]:
    """introapp inside asyncio.run, its agent on the app's loop."""
    process = start_introapp(module_tmp, "loop", INTROAPP_LOOP="1")
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def fresh_app(short_tmp: Path) -> Iterator[AppProcess]:
    """An introapp of its own, for tests that count what the process holds."""
    process = start_introapp(short_tmp)
    try:
        yield process
    finally:
        process.close()


@pytest.fixture
def stores() -> Iterator[Callable[..., HistoryStore]]:
    """Opens stores (app myapp unless told) and closes every one after the test."""
    opened: list[HistoryStore] = []

    def open_(spec: str, **options: Any) -> HistoryStore:
        options.setdefault("app", APP)
        options.setdefault("node", NODE)
        store = _history.open_store(spec, **options)
        assert isinstance(store, HistoryStore)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry a store that is down every few milliseconds, so recovery shows at once."""
    monkeypatch.setattr(_history, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(_history, "RETRY_MAX", 0.05)
