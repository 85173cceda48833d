"""When the app is sick (issue #21): the agent keeps answering, and the client says what is
wrong. Out of threads, start() from a task module, a stopped or GIL-bound app, a blocked
event loop, out of descriptors, and the review's races."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import app_agent
import rpcctl
from app_agent._jobs import job as _job
from app_agent._registry import Task
from app_agent._server import gate as _gate
from app_agent.wire import protocol
from conftest import (
    APPS,
    DEADLINE,
    EXIT_CODES,
    SAMPLEAPP,
    AppProcess,
    as_user,
    popen_rpcctl,
    run_rpcctl,
    tcp_sample_app,
    wait_until,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")

# -- 9. the review's races ---------------------------------------------------------------------


def test_a_job_summary_never_shows_a_half_recorded_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """summary() reads state, result and error under the job's lock: while finish() is
    half-way (state set, error not yet), a reader waits instead of seeing `failed` with no
    error (or `succeeded` with `result: null`)."""
    job = _job.Job("race", Task("t.race", lambda: None), "test")
    inside, release = threading.Event(), threading.Event()
    bounded = _job.bounded_error

    def slow_bounded(error: dict[str, Any]) -> dict[str, Any]:
        inside.set()  # finish() has set the state and holds the job's lock
        release.wait(DEADLINE)
        return bounded(error)

    monkeypatch.setattr(_job, "bounded_error", slow_bounded)
    finisher = threading.Thread(target=job.finish, args=(protocol.FAILED, None, {"message": "x"}))
    finisher.start()
    assert inside.wait(DEADLINE)
    seen: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: seen.append(job.summary()))
    reader.start()
    reader.join(0.2)  # gives a reader that does not wait the time to read the half-way job
    release.set()
    finisher.join(DEADLINE)
    reader.join(DEADLINE)
    assert seen[0]["state"] == "failed"
    assert seen[0].get("error", {}).get("message") == "x", seen


class _BothLook(threading.Event):
    """A stop flag that lets two stop() calls both look before either sets it: the window
    of a check-then-set. A stop() that decides under a lock lets only one look at a time
    (the barrier then breaks, and the first goes on alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=1.0)

    def is_set(self) -> bool:
        seen = super().is_set()
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return seen


def test_concurrent_stops_one_wins_the_other_is_a_no_op(short_tmp: Path) -> None:
    with capture_logs() as logs:
        agent = app_agent.start(node=f"unix:{short_tmp}/agent.sock", app="stops")
        agent._stopped = _BothLook()
        stops = [threading.Thread(target=agent.stop) for _ in range(2)]
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join(DEADLINE)
    assert [e["event"] for e in logs].count("agent.stopped") == 1
    assert app_agent.current() is None
    assert not (short_tmp / "agent.sock").exists()


# -- 2. start() while task modules import ------------------------------------------------------

START_FROM_TASK_MODULE = """
import app_agent
from app_agent import task

@task
def hello() -> str:
    return "hello"

app_agent.start()  # the mistake: a task module that starts the agent as it is imported
"""

START_FROM_ANOTHER_THREAD = """
import threading
import app_agent

errors = []

def starts() -> None:
    try:
        app_agent.start()
    except app_agent.AgentError as exc:
        errors.append(str(exc))

thread = threading.Thread(target=starts)
thread.start()
thread.join()  # a module that waits for a thread that starts the agent
raise RuntimeError(errors[0] if errors else "no error")
"""

STARTER = """
import sys
import app_agent
try:
    app_agent.start(tasks=[sys.argv[1]], app="starter")
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    agent = app_agent.current()
    print(f"current: {agent}")
    # start() works once the mistake is fixed: nothing was left half-started
    sys.modules.pop(sys.argv[1], None)
    with app_agent.start(app="again"):
        print("started again")
"""


def run_starter(short_tmp: Path, module: str, source: str) -> subprocess.CompletedProcess[str]:
    (short_tmp / f"{module}.py").write_text(source)
    script = short_tmp / "starter.py"
    script.write_text(STARTER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    env.update(PYTHONPATH=str(short_tmp), RPCCTL_NODE=f"unix:{short_tmp}/agent.sock")
    return subprocess.run(
        [sys.executable, str(script), module],
        capture_output=True,
        text=True,
        env=env,
        timeout=DEADLINE,  # today's code hangs here: the start() inside waits for the outer
        check=False,
    )


def test_start_from_a_task_module_is_refused_at_once_naming_the_module(short_tmp: Path) -> None:
    result = run_starter(short_tmp, "acme_tasks", START_FROM_TASK_MODULE)
    assert result.returncode == 0, result.stderr
    first, current, again = result.stdout.splitlines()
    assert first == (
        "AgentError: app_agent.start() was called by module acme_tasks while the agent "
        "imported its task modules (acme_tasks): start the agent from the app's entry point "
        "(its __main__, a server hook), not from a task module"
    )
    assert current == "current: None"
    assert again == "started again"


def test_start_from_another_thread_while_task_modules_import_is_refused(short_tmp: Path) -> None:
    result = run_starter(short_tmp, "acme_waits", START_FROM_ANOTHER_THREAD)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    # The module's own error, carrying the refusal its thread got.
    assert first.startswith("RuntimeError: app_agent.start() was called by module acme_waits ")
    assert "(acme_waits)" in first
    assert result.stdout.splitlines()[-1] == "started again"


STOP_INSIDE_START = """
import signal, sys
import app_agent
from app_agent import _agent

agent = app_agent.start(node=sys.argv[1], app="signal")
signal.signal(signal.SIGUSR1, lambda *_: agent.stop())
with _agent._lock:  # as inside start()'s checks, when a signal arrives
    signal.raise_signal(signal.SIGUSR1)  # the handler stops the agent on this same thread
print("stopped" if app_agent.current() is None else "running")
"""


def test_stop_from_a_signal_handler_that_interrupted_start_does_not_deadlock(
    short_tmp: Path,
) -> None:
    script = short_tmp / "stop_in_handler.py"
    script.write_text(STOP_INSIDE_START)
    result = subprocess.run(
        [sys.executable, str(script), f"unix:{short_tmp}/agent.sock"],
        capture_output=True,
        text=True,
        timeout=DEADLINE,  # a stop() waiting for the lock its own thread holds hangs here
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "stopped\n"), result.stderr


# -- 1. the gate never dies --------------------------------------------------------------------


def test_an_error_in_the_gate_is_logged_and_the_gate_goes_on(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = [OSError(errno.EBADF, "injected") for _ in range(4)]
    real = _gate.peer_credentials

    def flaky(sock: socket.socket) -> tuple[int, int, int]:
        if failures:
            raise failures.pop()
        return real(sock)

    monkeypatch.setattr(_gate, "peer_credentials", flaky)
    node = f"unix:{short_tmp}/agent.sock"
    with capture_logs() as logs, app_agent.start(node=node, app="flaky"):
        failed = [run_rpcctl("-n", node, "ping") for _ in range(4)]
        again = run_rpcctl("-n", node, "ping")
        info = run_rpcctl("-n", node, "info", "--json")
    assert [r.returncode for r in failed] == [EXIT_CODES["unreachable"]] * 4
    assert (again.returncode, again.stdout) == (0, "pong\n"), again.stderr
    assert info.returncode == 0, info.stderr
    errors = [e for e in logs if e["event"] == "gate.error"]  # one line per 10 s
    assert [(e["error"], e["log_level"]) for e in errors] == [
        ("OSError: [Errno 9] injected", "error")
    ]
    assert isinstance(errors[0]["exc_info"], OSError)


def interrupting(gate: _gate.Gate, times: int) -> list[int]:
    """Make the gate's loop end *times* times with an exception the loop does not catch (as
    one injected into its thread would); the count of the ones raised so far."""
    raised = [0]
    real = gate._housekeeping

    def housekeeping() -> None:
        if raised[0] < times:
            raised[0] += 1
            raise KeyboardInterrupt("injected")
        real()

    gate._housekeeping = housekeeping  # type: ignore[method-assign]
    return raised


def test_an_agent_thread_that_dies_is_run_again(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    with capture_logs() as logs, app_agent.start(node=node, app="once") as agent:
        raised = interrupting(agent.gate, 1)
        run_rpcctl("-n", node, "ping")  # wakes the loop, which dies and is run again
        answered = run_rpcctl("-n", node, "ping")
        assert raised == [1]
        assert app_agent.current() is agent
    assert answered.returncode == 0, answered.stderr
    restarted = [e for e in logs if e["event"] == "gate.error"]
    assert [(e["error"], e["restart"]) for e in restarted] == [("KeyboardInterrupt: injected", 1)]


def test_an_agent_whose_thread_keeps_dying_says_it_is_down(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/agent.sock"
    with capture_logs() as logs:
        agent = app_agent.start(node=node, app="doomed")
        interrupting(agent.gate, 1000)
        wait_until(
            lambda: run_rpcctl("-n", node, "ping").returncode != 0 and not agent.alive,
            what="the agent to give up",
        )
        current = app_agent.current()
    assert current is None
    assert agent.down is not None
    assert "KeyboardInterrupt: injected" in agent.down
    assert not (short_tmp / "agent.sock").exists()  # nothing left that looks alive
    result = run_rpcctl("-n", node, "ping")
    assert result.returncode == EXIT_CODES["unreachable"]
    assert "no agent is running (the socket does not exist)" in result.stderr
    down = [e for e in logs if e["event"] == "agent.down"]
    assert [e["reason"] for e in down] == [agent.down]
    # A new agent can start in its place.
    with app_agent.start(node=node, app="again"):
        assert run_rpcctl("-n", node, "ping").returncode == 0


HUNGRY_UID = 64_123
"""An unprivileged uid of the thread-hungry app's own: RLIMIT_NPROC counts every thread of
the uid on the machine, so a uid other tests share (nobody) would make its limit move."""
HUNGRY_LIMIT = 24


def hungry_echo(value: Any = None) -> Any:
    """A task of the thread-hungry app (registered only in its forked process)."""
    return value


def thread_hungry_app(node: str, commands: int, answers: int, log: Path) -> None:
    """The forked child, as HUNGRY_UID under RLIMIT_NPROC: an agent, and on command
    (one byte on *commands*) threads started until none can be ("h"), all released ("r"),
    all released but one slot ("o")."""
    sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115  (the child's log until it exits)
    resource.setrlimit(resource.RLIMIT_NPROC, (HUNGRY_LIMIT, HUNGRY_LIMIT))
    app_agent.task(hungry_echo)
    agent = app_agent.start(node=node, app="hungry", version="1")  # no metadata to read
    hogs: list[tuple[threading.Thread, threading.Event]] = []

    def release(count: int) -> None:
        for _ in range(count):
            thread, event = hogs.pop()
            event.set()
            thread.join()

    while command := os.read(commands, 1):
        if command == b"h":
            while True:
                event = threading.Event()
                thread = threading.Thread(target=event.wait, daemon=True)
                try:
                    thread.start()
                except RuntimeError:
                    break
                hogs.append((thread, event))
            os.write(answers, f"{len(hogs)}\n".encode())
        elif command == b"o":
            release(1)
            os.write(answers, b"one\n")
        elif command == b"r":
            release(len(hogs))
            os.write(answers, b"released\n")
    agent.stop()


@needs_root
def test_an_app_out_of_threads_refuses_calls_in_words_answers_pings_and_recovers(
    run_tmp: Path,
) -> None:
    import app_agent._service  # noqa: F401  (loaded before the fork: the child cannot read it)

    # The app's own 0700 directory under a root-owned parent (as systemd's RuntimeDirectory):
    # root trusts the other user's socket there, never under /tmp.
    run_dir = run_tmp / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, HUNGRY_UID, HUNGRY_UID)
    node = f"unix:{run_dir}/agent.sock"
    log = run_dir / "app.log"
    commands_r, commands_w = os.pipe()
    answers_r, answers_w = os.pipe()

    def app() -> None:
        os.close(commands_w)
        thread_hungry_app(node, commands_r, answers_w, log)

    child = as_user(HUNGRY_UID, app)
    os.close(commands_r)
    os.close(answers_w)
    answers = os.fdopen(answers_r)

    def command(byte: bytes) -> str:
        os.write(commands_w, byte)
        return answers.readline().strip()

    try:
        assert run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE)).returncode == 0
        assert int(command(b"h")) > 0  # the app now has every thread it may have
        refused = run_rpcctl("-n", node, "info")
        pinged = run_rpcctl("-n", node, "ping")
        assert command(b"o") == "one"  # room for a connection's thread, none for a job's
        job_refused = run_rpcctl("-n", node, "rpc", "test_sick.hungry_echo(1)")
        checks: list[subprocess.CompletedProcess[str]] = []
        # The connection's thread runs (once the last one has exited), its checks cannot.
        wait_until(
            lambda: checks.append(run_rpcctl("-n", node, "health")) or checks[-1].returncode != 7,
            what="health with room for its connection only",
        )
        assert command(b"r") == "released"
        again = run_rpcctl("-n", node, "rpc", "test_sick.hungry_echo(2)")
    finally:
        os.close(commands_w)
        answers.close()
        os.waitpid(child, 0)
    assert refused.returncode == EXIT_CODES["busy"], refused.stderr
    assert f"{node}: the app cannot start a thread (it has {HUNGRY_LIMIT} threads" in refused.stderr
    assert "this call is refused, pings still answer" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert (pinged.returncode, pinged.stdout) == (0, "pong\n"), pinged.stderr
    assert job_refused.returncode == EXIT_CODES["busy"], job_refused.stderr
    assert "the app cannot start a thread (it has" in job_refused.stderr
    assert checks[-1].returncode == EXIT_CODES["unhealthy"], checks[-1].stderr
    assert "FAIL  agent.jobs" in checks[-1].stdout
    assert "the app cannot start a thread (it has" in checks[-1].stdout
    assert (again.returncode, again.stdout) == (0, "2\n"), again.stderr  # no restart needed
    events = [json.loads(line) for line in log.read_text().splitlines()]
    reasons = [e.get("reason", "") for e in events if e["event"] == "connection.refused"]
    assert any(r.startswith("no thread for the connection: the app cannot") for r in reasons)
    assert not [e for e in events if e["event"] in ("gate.error", "agent.down")]


# -- 3. a client that gets no answer says why --------------------------------------------------

COOKIE = "sick-app-cookie"
SICKAPP = [sys.executable, str(APPS / "sickapp.py")]


@pytest.fixture(params=["unix", "tcp"])
def any_app(request: pytest.FixtureRequest, short_tmp: Path) -> Iterator[AppProcess]:
    """sampleapp on a UNIX socket, or on loopback TCP with a cookie."""
    if request.param == "unix":
        app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    else:
        app = tcp_sample_app(COOKIE)
    try:
        yield app
    finally:
        app.close()


def rpcctl_of(app: AppProcess, *args: str) -> subprocess.CompletedProcess[str]:
    cookie = app.env.get("RPCCTL_COOKIE")
    return run_rpcctl("-n", app.node, *args, env={"RPCCTL_COOKIE": cookie} if cookie else None)


@pytest.mark.parametrize("command", ["ping", "info"])
def test_a_stopped_app_is_named_with_how_to_resume_it(any_app: AppProcess, command: str) -> None:
    pid = any_app.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: proc_state(pid) == "T", what="the app to stop")
        result = rpcctl_of(any_app, command, "--timeout", "1")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == EXIT_CODES["timeout"], result.stderr
    assert result.stderr == (
        f"rpcctl: error: {any_app.node}: the agent did not answer the handshake within 1s: "
        f"the app (pid {pid}) is stopped — SIGSTOP or a debugger; `kill -CONT {pid}` resumes "
        "it\n"
    )
    assert rpcctl_of(any_app, "ping").returncode == 0


def test_a_kept_connection_to_an_app_that_stops_says_it_is_stopped(sample_app: AppProcess) -> None:
    pid = sample_app.proc.pid
    with rpcctl.connect(sample_app.node, timeout=1) as app:
        assert app.ping() == "pong"
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: proc_state(pid) == "T", what="the app to stop")
            with pytest.raises(rpcctl.CallTimeout) as raised:
                app.info()
        finally:
            os.kill(pid, signal.SIGCONT)
    assert raised.value.message == (
        f"{sample_app.node}: no answer to info within 1s: the app (pid {pid}) is stopped — "
        f"SIGSTOP or a debugger; `kill -CONT {pid}` resumes it"
    )


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_an_app_whose_gil_is_held_by_native_code_is_named(short_tmp: Path) -> None:
    """A task holds the GIL in one C call: no Python thread of the app, the agent's
    included, gets a word in, so the handshake gets no answer (today: only "did not answer
    the handshake in time")."""
    app = AppProcess(SICKAPP, node=f"unix:{short_tmp}/run/agent.sock")
    marker = short_tmp / "holding"
    holder = popen_rpcctl("-n", app.node, "rpc", f"sickapp.hold_gil({str(marker)!r})")
    try:
        wait_until(marker.exists, what="the task to hold the GIL")
        result = app.rpcctl("ping", "--timeout", "1")
    finally:
        app.proc.kill()  # its SIGTERM handler would wait for the GIL for minutes
        app.close()
        holder.kill()
        holder.communicate()
    pid = app.proc.pid
    assert result.returncode == EXIT_CODES["timeout"], result.stderr
    assert result.stderr == (
        f"rpcctl: error: {app.node}: the agent did not answer the handshake within 1s: the "
        f"app (pid {pid}) is running but none of its Python threads answered: native code may "
        f"be holding the GIL; `py-spy dump --pid {pid}` shows where\n"
    )


@pytest.mark.parametrize("reaped", [False, True])
def test_a_listener_that_exited_while_its_child_keeps_the_socket(
    short_tmp: Path, reaped: bool
) -> None:
    """The process that listened has exited (a zombie, or reaped), but a process it forked
    holds the socket: connections queue and nothing will ever accept them."""
    path = str(short_tmp / "agent.sock")
    release_r, release_w = os.pipe()
    listener = os.fork()
    if listener == 0:  # pragma: no cover - the child
        os.close(release_w)
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.listen()
        if os.fork() == 0:
            os.read(release_r, 1)  # the grandchild holds the socket until the test is done
        os._exit(0)
    os.close(release_r)
    try:
        if reaped:
            os.waitpid(listener, 0)
        else:
            wait_until(lambda: proc_state(listener) == "Z", what="a zombie")
        result = run_rpcctl("-n", f"unix:{path}", "ping", "--timeout", "1")
    finally:
        os.close(release_w)
        if not reaped:
            os.waitpid(listener, 0)
    assert result.returncode == EXIT_CODES["timeout"], result.stderr
    exited = (
        "that listened there has exited"
        if reaped
        else "has exited (a zombie its parent has not reaped)"
    )
    assert f"the app (pid {listener}) {exited}, but a process it forked still holds " in (
        result.stderr
    )
    assert result.stderr.endswith("so nothing answers; `ss -lp` names it\n")


def test_a_silent_app_on_another_host_accepted_but_did_not_answer() -> None:
    """Over TCP to an address of another host (here: one of this host's own that is not
    loopback, listened on by a process that never accepts), the client can only say that
    the connection was accepted and nothing answered."""
    host = non_loopback_address()
    with socket.socket() as silent:
        silent.bind((host, 0))
        silent.listen()
        node = f"tcp://{host}:{silent.getsockname()[1]}"
        result = run_rpcctl("-n", node, "ping", "--timeout", "1", env={"RPCCTL_COOKIE": COOKIE})
    assert result.returncode == EXIT_CODES["timeout"], result.stderr
    assert result.stderr == (
        f"rpcctl: error: {node}: the app accepted the connection but did not answer within 1s "
        "(it may be stopped, blocked by native code, or out of descriptors: on its host, "
        "`py-spy dump --pid PID` shows where it is)\n"
    )


def non_loopback_address() -> str:
    """An IPv4 address of this host that is not loopback (the test skips without one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent by a UDP connect
            address = str(probe.getsockname()[0])
        except OSError:
            address = "127.0.0.1"
    if address.startswith("127."):
        pytest.skip("this host has no address other than loopback")
    return address


# -- 4. a blocked event loop is named ----------------------------------------------------------

INTROAPP = APPS / "introapp.py"


def test_health_names_what_blocks_the_event_loop(short_tmp: Path) -> None:
    app = AppProcess(
        [sys.executable, str(INTROAPP)],
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"INTROAPP_LOOP": "1"},
    )
    gate = short_tmp / "gate"
    blocker = popen_rpcctl("-n", app.node, "rpc", f"introapp.block_loop({str(gate)!r})")
    try:
        assert blocker.stdout is not None
        assert blocker.stdout.readline() == "blocking\n"  # the coroutine now sleeps on the loop
        health = app.rpcctl("health")
        stack = app.rpcctl("stack")
    finally:
        gate.touch()
        blocker.communicate(timeout=DEADLINE)
        app.close()
    sleeping = next(
        number
        for number, line in enumerate(INTROAPP.read_text().splitlines(), 1)
        if "time.sleep(TICK)  # on purpose" in line
    )
    assert health.returncode == EXIT_CODES["unhealthy"], health.stderr
    assert re.search(
        r"^FAIL  agent\.event_loop +\d+ ms  the event loop is blocked for over \d+\.\d s in "
        rf"block_loop \(introapp\.py:{sleeping}\) \(threshold 1s; `rpcctl stack` shows the "
        r"whole stack\)$",
        health.stdout,
        re.M,
    ), health.stdout
    assert f'introapp.py", line {sleeping}, in block_loop' in stack.stdout  # still in full


# -- 6. descriptors exhausted ------------------------------------------------------------------

NOFILE = 64


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_the_gate_backs_off_logs_once_and_answers_again(
    short_tmp: Path,
) -> None:
    app = AppProcess(
        SICKAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"SICKAPP_NOFILE": str(NOFILE), "SICKAPP_DIR": str(short_tmp)},
    )
    pid = app.proc.pid
    try:
        for episode in (1, 2):  # the second within the log's interval: not logged again
            os.kill(pid, signal.SIGUSR1)
            wait_until((short_tmp / f"holding-{episode}").exists, what="every descriptor held")
            before = cpu_seconds(pid)
            starved = [app.rpcctl("ping", "--timeout", "1") for _ in range(3)]
            spent = cpu_seconds(pid) - before
            (short_tmp / f"release-{episode}").touch()
            wait_until(lambda: app.rpcctl("ping").returncode == 0, what="answers again")
            for result in starved:
                assert result.returncode == EXIT_CODES["timeout"], result.stderr
                assert (
                    f"the app (pid {pid}) has all {NOFILE} descriptors it may open "
                    "(RLIMIT_NOFILE) in use, so it cannot accept the connection; "
                    f"`ls -l /proc/{pid}/fd` shows what holds them\n"
                ) in result.stderr
            # Three seconds and more without descriptors: a gate that spun would burn them.
            assert spent < 0.5, f"{spent:.2f} s of CPU while out of descriptors"
        assert app.rpcctl("info").returncode == 0
    finally:
        log = app.stderr()
        app.close()
    events = [json.loads(line)["event"] for line in log.splitlines() if line.startswith("{")]
    assert events.count("gate.cannot_accept") == 1, log
    assert events.count("gate.accepting_again") == 1, log
    assert "gate.error" not in events
