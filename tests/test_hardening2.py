"""Hardening, second round (issue #20): what a hostile trial of the hardened agent still broke,
each kept fixed by a test.

An impostor in a directory it made before the app started, the runner's lock through a
planted symlink, records and frames that never arrive whole, memory spent before the grant
is checked, slow followers, abandoned profiles, a thread per log-level revert, and the
smaller ones (malformed frames, refusals naming the real task, console audit, arguments
touched before their checks, cookies of another app, cookie files that are not files).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import json
import os
import re
import socket
import struct
import subprocess
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app_agent
import rpcctl
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from app_agent import wire
from app_agent.exceptions import ConfigurationError
from conftest import (
    DEADLINE,
    NOBODY,
    SAMPLEAPP,
    AppProcess,
    Relay,
    as_user,
    listed_jobs,
    needs_root,
    open_rpc,
    popen_rpcctl,
    rpcctl_executable,
    run_rpcctl,
    wait_until,
)
from rpcctl.exceptions import AuthenticationFailed, CallTimeout, UsageError

# -- 1. an impostor through a pre-created directory ------------------------------------------


@contextlib.contextmanager
def agent_as_nobody(node: str) -> Iterator[None]:
    """sampleapp's tasks served by an agent in a forked child that has become nobody."""
    # Loaded first: the child cannot read root's home (the interpreter's stdlib) any more.
    importlib.import_module("app_agent._agent")
    importlib.import_module("app_agent._service")
    stop_r, stop_w = os.pipe()

    def app() -> None:
        os.close(stop_w)
        agent = app_agent.start(node=node, app="as-nobody", version="1")
        os.read(stop_r, 1)  # until the test closes the pipe
        agent.stop()

    child = as_user(NOBODY, app)
    os.close(stop_r)
    try:
        wait = run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE))
        assert (wait.returncode, wait.stdout) == (0, "pong\n"), wait.stderr
        yield
    finally:
        os.close(stop_w)
        os.waitpid(child, 0)


@needs_root
def test_an_impostor_in_a_directory_it_made_under_tmp_gets_nothing(short_tmp: Path) -> None:
    """Another user makes a 0700 directory where the app's socket will be, in a directory
    anyone may write (here a copy of /tmp: world-writable and sticky), and listens there:
    root's client refuses it before sending a byte, naming the directory and its owner."""
    short_tmp.chmod(0o1777)
    shared = short_tmp / "shared-app"
    path = shared / "agent.sock"
    ready_r, ready_w = os.pipe()
    received_r, received_w = os.pipe()

    def impostor() -> None:
        os.mkdir(shared, 0o700)
        listener = socket.socket(socket.AF_UNIX)
        listener.settimeout(DEADLINE)
        listener.bind(str(path))
        listener.listen()
        os.write(ready_w, b"!")
        conn, _ = listener.accept()
        conn.settimeout(DEADLINE)
        os.write(received_w, b"got:" + conn.recv(4096))

    child = as_user(NOBODY, impostor)
    os.close(ready_w)
    os.close(received_w)
    try:
        assert os.read(ready_r, 1) == b"!"
        result = run_rpcctl("-n", f"unix:{path}", "rpc", "add(1, 2)", timeout=DEADLINE)
    finally:
        with os.fdopen(received_r, "rb") as pipe:
            got = pipe.read()
        os.close(ready_r)
        os.waitpid(child, 0)
    assert result.returncode == 5, result.stderr
    assert f"uid {NOBODY} (nobody), the owner of the socket's directory {shared}" in result.stderr
    assert f"but {short_tmp} above it is writable by anyone (mode 1777)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert got == b"got:"  # it saw a connection, then nothing: no hello, no call


@needs_root
@pytest.mark.parametrize(
    ("mode", "owner", "says"),
    [
        (0o775, 0, "writable by its group (mode 0775)"),
        (0o757, 0, "writable by anyone (mode 0757)"),
        (0o755, 1, "writable by its owner, uid 1"),
    ],
)
def test_the_directory_owner_is_trusted_only_when_nobody_else_could_have_made_it(
    run_tmp: Path, mode: int, owner: int, says: str
) -> None:
    """The app runs as nobody in nobody's 0700 directory under a parent only root can write
    (as systemd's RuntimeDirectory makes /run/myapp): root's client trusts it, and the agent
    admits root. The trust lasts only while every parent up to / is writable by root and
    nobody alone."""
    run_dir = run_tmp / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    node = f"unix:{run_dir}/agent.sock"
    with agent_as_nobody(node):
        assert run_rpcctl("-n", node, "rpc", "add(1, 2)").stdout == "3\n"
        os.chown(run_tmp, owner, 0)
        run_tmp.chmod(mode)
        refused = run_rpcctl("-n", node, "rpc", "add(1, 2)")
        run_tmp.chmod(0o755)
        os.chown(run_tmp, 0, 0)
        assert refused.returncode == 5, refused.stderr
        assert f"the owner of the socket's directory {run_dir}, but {run_tmp} above it" in (
            refused.stderr
        )
        assert says in refused.stderr
        assert run_rpcctl("-n", node, "rpc", "add(1, 2)").stdout == "3\n"


@needs_root
def test_the_agent_refuses_to_listen_in_another_users_directory(short_tmp: Path) -> None:
    theirs = short_tmp / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(ConfigurationError) as refused:
        app_agent.start(node=f"unix:{theirs}/agent.sock")
    assert str(refused.value) == (
        f"unix:{theirs}/agent.sock: refusing to listen in {theirs}: it belongs to uid {NOBODY} "
        "(nobody), not to this process (uid 0) or root, so that user could replace the socket; "
        "remove the directory or pick another"
    )
    assert not (theirs / "agent.sock").exists()
    assert app_agent.current() is None


# -- 2. the runner's lock never follows a planted link -----------------------------------------


def release_in(directory: Path) -> Path:
    """An rpcctl.toml whose socket (and so its lock, app.sock.lock) is in *directory*; its
    app exits at once, so a runner that got past the lock ends quickly."""
    config = directory / "rpcctl.toml"
    config.write_text(
        '[app]\nname = "victim"\ncommand = ["true"]\n'
        f'node = "unix:{directory}/app.sock"\nready_timeout = 5\n'
    )
    return config


@needs_root
def test_the_release_lock_never_follows_a_planted_symlink(short_tmp: Path) -> None:
    """Another user links app.sock.lock, in a directory anyone may write, to a file of
    root's: root's `start` refuses it and leaves the file as it was."""
    short_tmp.chmod(0o1777)
    victim = short_tmp / "victim"
    victim.write_text("precious\n")
    lock = short_tmp / "app.sock.lock"
    child = as_user(NOBODY, lambda: os.symlink(victim, lock))
    assert os.waitpid(child, 0)[1] == 0
    result = run_rpcctl("--config", str(release_in(short_tmp)), "start", timeout=DEADLINE)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"rpcctl: error: cannot open the release lock {lock}: it is a symbolic link\n"
    )
    assert victim.read_text() == "precious\n"


@needs_root
@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        ("another user's file", f"it belongs to uid {NOBODY}, not to us (uid 0)"),
        ("a hard link", "it has 2 hard links"),
        ("a FIFO", "it is not a regular file"),
        ("a long file", "it holds 100 bytes: not a lock file"),
    ],
)
def test_the_release_lock_must_be_a_lock_file_of_ours(
    short_tmp: Path, plant: str, problem: str
) -> None:
    lock = short_tmp / "app.sock.lock"
    victim = short_tmp / "victim"
    victim.write_text("x" * 100)
    if plant == "another user's file":
        lock.write_text("123\n")
        os.chown(lock, NOBODY, NOBODY)
    elif plant == "a hard link":
        os.link(victim, lock)
    elif plant == "a FIFO":
        os.mkfifo(lock, 0o600)
    else:
        lock.write_text("x" * 100)
    before = lock.stat()
    result = run_rpcctl("--config", str(release_in(short_tmp)), "start", timeout=DEADLINE)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"rpcctl: error: refusing the release lock {lock}: {problem}; "
        "remove it if it is not yours\n"
    )
    after = lock.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert victim.read_text() == "x" * 100


def test_a_lock_file_left_by_an_earlier_run_is_reused_never_truncated(short_tmp: Path) -> None:
    lock = short_tmp / "app.sock.lock"
    lock.write_text("1234567\n")  # an earlier runner's pid, longer than some pids
    lock.chmod(0o600)
    run_rpcctl("--config", str(release_in(short_tmp)), "start", timeout=DEADLINE)
    text = lock.read_text()
    assert len(text) == len("1234567\n")
    assert text.endswith("\n")
    assert text.split()[0].isdigit()
    assert text.split()[0] != "1234567"


# -- 3. a record that never ends: exit 5 or 4, never a hang -----------------------------------

COOKIE = "hardening2-cookie-0123456789abcdef"


def agent_events(app: AppProcess, *names: str) -> list[dict[str, Any]]:
    """The agent's log events named *names* (all of them when none is named)."""
    log = [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]
    return [e for e in log if not names or e["event"] in names]


@contextlib.contextmanager
def tcp_cookie_app(idle_timeout: str = "300") -> Iterator[AppProcess]:
    """sampleapp on tcp:// with a cookie (records on the wire); RPCCTL_IDLE_TIMEOUT also
    bounds a frame's pauses."""
    app = AppProcess(
        SAMPLEAPP,
        node="tcp://127.0.0.1:0",
        env={"RPCCTL_COOKIE": COOKIE, "RPCCTL_IDLE_TIMEOUT": idle_timeout},
    )
    app.node = app.stdout_lines[-1].split()[1]  # READY <node>: the real port
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def cookie_app() -> Iterator[AppProcess]:
    """tcp_cookie_app quick to close a stalled connection (1 s)."""
    with tcp_cookie_app("1") as app:
        yield app


class FlipLength:
    """A relay mutation: flip *bit* of the length of the first record crossing, once."""

    def __init__(self, bit: int) -> None:
        self.mask = (1 << bit).to_bytes(4, "big")
        self.done = False

    def __call__(self, data: bytes, _dst: socket.socket) -> bytes:
        if self.done:
            return data
        self.done = True  # the relay hands over a record's start first: its length
        return bytes(a ^ b for a, b in zip(data[:4], self.mask, strict=True)) + data[4:]


def rpc_through_relay(node: str, **mutations: FlipLength) -> subprocess.CompletedProcess[str]:
    """`rpcctl rpc add(1, 2)` through a relay to *node* that applies *mutations*."""
    relay = Relay(node, **mutations)
    try:
        return run_rpcctl(
            "-n", relay.node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": COOKIE}, timeout=DEADLINE
        )
    finally:
        relay.close()


def test_a_reply_record_that_never_ends_times_out() -> None:
    """Bit 16 of a reply's length: the record announces 64 KiB more than ever comes. (The
    agent keeps the connection open meanwhile: closing it would end the record early, a
    tampering, exit 5.)"""
    with tcp_cookie_app() as app:
        relay = Relay(app.node, to_client=FlipLength(16))
        try:
            with pytest.raises(CallTimeout) as timed_out:
                rpcctl.connect(relay.node, timeout=1, cookie=COOKIE)
        finally:
            relay.close()
    assert timed_out.value.exit_code == 4
    assert "the agent's answer to root did not arrive whole" in str(timed_out.value)
    assert "a frame stopped arriving (no byte for 1s)" in str(timed_out.value)


@pytest.mark.parametrize(("bit", "says"), [(30, "reply failed its integrity check"), (31, "")])
def test_a_reply_record_with_an_impossible_length_is_tampering(
    cookie_app: AppProcess, bit: int, says: str
) -> None:
    """Bit 30: over the record limit, refused before a byte is buffered. Bit 31: an alert
    that fails its tag."""
    result = rpc_through_relay(cookie_app.node, to_client=FlipLength(bit))
    assert result.returncode == 5, result.stderr
    assert says in result.stderr
    assert "tampered with the connection" in result.stderr


def test_a_request_record_that_never_ends_is_tampering_for_both(cookie_app: AppProcess) -> None:
    """The agent waits for the rest of the record no longer than a frame may pause (here
    the idle timeout, 1 s), tells the client with an authenticated alert, and closes."""
    result = rpc_through_relay(cookie_app.node, to_agent=FlipLength(16))
    assert result.returncode == 5, result.stderr
    assert "the agent found our request altered on the way" in result.stderr
    direct = run_rpcctl("-n", cookie_app.node, "rpc", "add(2, 2)", env={"RPCCTL_COOKIE": COOKIE})
    assert direct.stdout == "4\n"
    tampered = agent_events(cookie_app, "connection.tampered")
    assert [e["reason"] for e in tampered] == ["a frame stopped arriving (no byte for 1s)"]


# -- 4. a frame, once begun, must arrive within a deadline ------------------------------------


def partial_frame(path: str) -> socket.socket:
    """An admitted connection that has sent part of an RPyC frame and goes quiet."""
    sock = open_rpc(path)
    sock.sendall(struct.pack("!LB", 1000, 0) + b"\x01" * 10)
    return sock


def test_a_partial_frame_is_closed_at_its_deadline(short_tmp: Path) -> None:
    app = AppProcess(
        SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock", env={"RPCCTL_IDLE_TIMEOUT": "1"}
    )
    try:
        with partial_frame(wire.parse_node(app.node).path) as sock:
            while sock.recv(4096):  # RPyC's polite close, then the agent hangs up
                pass
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
    finally:
        stalled = agent_events(app, "connection.stalled", "connection.idle_closed")
        app.close()
    assert [(e["event"], e["reason"]) for e in stalled if "reason" in e] == [
        ("connection.stalled", "a frame stopped arriving (no byte for 1s)")
    ]


def test_partial_frames_at_the_connection_cap_lock_nobody_out(short_tmp: Path) -> None:
    """256 connections, each with part of a frame sent (the agent serves at most 256): they
    are closed as their frames stall, and real callers get in again."""
    app = AppProcess(
        SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock", env={"RPCCTL_IDLE_TIMEOUT": "2"}
    )
    path = wire.parse_node(app.node).path
    held = []
    try:
        held = [partial_frame(path) for _ in range(256)]
        wait_until(lambda: app.rpcctl("info").returncode == 0, what="room for a real caller")
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
    finally:
        for sock in held:
            sock.close()
        app.close()


# -- 5. memory before permission: grants first, arguments bounded, never inflated past -------

ACCESS = """\
[identity.deploy]
cookie_file = "deploy.cookie"
allow = ["*"]

[identity.probe]
cookie_file = "probe.cookie"
allow = []
"""


def peak_rss_kib(pid: int) -> int:
    """The high-water mark of *pid*'s resident memory (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


@pytest.fixture
def guarded_app(short_tmp: Path) -> Iterator[AppProcess]:
    """sampleapp with an access file: deploy may do everything, probe nothing but ping."""
    for name in ("deploy", "probe", "access"):
        path = short_tmp / (f"{name}.cookie" if name != "access" else "access.toml")
        path.write_text(ACCESS if name == "access" else f"{name}-cookie-0123456789abcdef\n")
        path.chmod(0o600)
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"RPCCTL_ACCESS": str(short_tmp / "access.toml")},
    )
    try:
        yield app
    finally:
        app.close()


def connect_as(app: AppProcess, identity: str) -> rpcctl.Client:
    cookie = Path(app.env["RPCCTL_ACCESS"]).parent / f"{identity}.cookie"
    return rpcctl.connect(app.node, identity=identity, cookie_file=cookie, timeout=DEADLINE)


def test_arguments_over_the_limit_are_refused_unread(guarded_app: AppProcess) -> None:
    """32 MiB that do not compress (drained as they arrive) and 40 MiB that compress to a
    few KiB (inflated no further than the limit): both exit 2, and the agent's peak memory
    grows by less than either argument."""
    with connect_as(guarded_app, "deploy") as app:
        assert app.call("sampleapp.add", 1, 2) == 3  # warm: RPyC and the service loaded
        before = peak_rss_kib(guarded_app.proc.pid)
        noise = base64.b64encode(os.urandom(24 << 20)).decode()
        for argument in (noise, "x" * (40 << 20)):
            with pytest.raises(UsageError) as refused:
                app.call("sampleapp.echo", argument)
            assert refused.value.exit_code == 2
            assert str(refused.value) == (
                "a request of more than 16,777,216 bytes: this agent takes arguments of at most "
                "16,777,216 bytes as JSON (max_argument_bytes in the app, or "
                "RPCCTL_MAX_ARGUMENT_BYTES)"
            )
        assert app.call("sampleapp.add", 2, 2) == 4  # the connection goes on
        grown = peak_rss_kib(guarded_app.proc.pid) - before
    assert grown < 24 * 1024, f"the agent's peak memory grew by {grown} KiB"


def test_a_probe_sends_no_arguments(guarded_app: AppProcess) -> None:
    """An identity that may run nothing has no arguments to send: a request over a few KiB
    is refused unread (exit 5), and a small one is refused by its grant, as ever."""
    with connect_as(guarded_app, "probe") as probe:
        with pytest.raises(AuthenticationFailed) as refused:
            probe.call("sampleapp.echo", "x" * (1 << 20))
        assert refused.value.exit_code == 5
        assert str(refused.value).startswith("probe may run no task, so it sends no arguments (")
        with pytest.raises(AuthenticationFailed, match=r"^probe may not run sampleapp\.echo$"):
            probe.call("sampleapp.echo", "x")
        assert probe.ping() == "pong"


def test_max_argument_bytes_is_the_agents_own_limit(short_tmp: Path) -> None:
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"RPCCTL_MAX_ARGUMENT_BYTES": "2048"},
    )
    try:
        assert app.rpcctl("rpc", f'sampleapp.echo("{"x" * 2000}")').returncode == 0
        refused = app.rpcctl("rpc", f'sampleapp.echo("{"x" * 5000}")')
        # Past the limit and its small slack: refused before the frame is read.
        noise = base64.b64encode(os.urandom(90_000)).decode()
        drained = app.rpcctl("rpc", f'sampleapp.echo("{noise}")')
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
    finally:
        app.close()
    assert (refused.returncode, refused.stderr) == (
        2,
        "rpcctl: error: a request of 5,049 bytes: this agent takes arguments of at most 2,048 "
        "bytes as JSON (max_argument_bytes in the app, or RPCCTL_MAX_ARGUMENT_BYTES)\n",
    )
    assert drained.returncode == 2, drained.stderr
    assert drained.stderr.startswith("rpcctl: error: a request of ")
    assert "this agent takes arguments of at most 2,048 bytes" in drained.stderr


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({"max_argument_bytes": 10}, "max_argument_bytes must be a whole number of bytes"),
        ({"max_argument_bytes": 1.5e6}, "max_argument_bytes must be a whole number of bytes"),
        ({}, "RPCCTL_MAX_ARGUMENT_BYTES='lots': expected a number of bytes"),
    ],
)
def test_a_bad_max_argument_bytes_is_a_configuration_error(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, Any], says: str
) -> None:
    monkeypatch.setenv("RPCCTL_MAX_ARGUMENT_BYTES", "lots")
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        app_agent.start(node=f"unix:{short_tmp}/a.sock", **given)


def test_a_compressed_frame_is_never_inflated_past_the_limit(short_tmp: Path) -> None:
    """An admitted peer sends one frame of 1 MiB that inflates to 1 GiB: the agent inflates
    at most its limit, drops that connection, logs it once, and answers on."""
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    path = wire.parse_node(app.node).path
    deflate = zlib.compressobj(9)
    zeros = b"\0" * (1 << 20)
    bomb = b"".join(deflate.compress(zeros) for _ in range(1024)) + deflate.flush()
    try:
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
        before = peak_rss_kib(app.proc.pid)
        with open_rpc(path) as sock:
            sock.sendall(struct.pack("!LB", len(bomb), 1) + bomb + b"\n")
            while sock.recv(65536):
                pass
        grown = peak_rss_kib(app.proc.pid) - before
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
    finally:
        malformed = agent_events(app, "connection.malformed")
        app.close()
    assert grown < 64 * 1024, f"the agent's peak memory grew by {grown} KiB"
    assert [e["reason"] for e in malformed] == [
        "OversizedFrame: a request of more than 16,842,752 bytes"
    ]


# -- 9. smaller ones -------------------------------------------------------------------------


def test_malformed_frames_are_one_bounded_event_each_never_a_traceback(short_tmp: Path) -> None:
    """20 admitted connections each send a frame RPyC cannot parse: each ends only its own
    connection, with one structured event, the first 5 of the window one by one and the
    rest counted in a summary; no thread prints a traceback."""
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    path = wire.parse_node(app.node).path
    try:
        for n in range(20):
            with open_rpc(path) as sock:
                garbage = bytes([99]) + n.to_bytes(4, "big")  # message type 99: none of RPyC's
                sock.sendall(struct.pack("!LB", len(garbage), 0) + garbage + b"\n")
                while sock.recv(65536):
                    pass
        assert app.rpcctl("rpc", "add(1, 2)").stdout == "3\n"
    finally:
        stderr = app.stderr()
        app.close()
    assert "Traceback" not in stderr
    log = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    single = [e for e in log if e["event"] == "connection.malformed"]
    summary = [e for e in log if e["event"] == "connection.malformed_summary"]
    assert len(single) + sum(e["malformed"] for e in summary) == 20
    assert len(single) <= 10  # 5 a 10-second window (the loop above takes well under 20 s)
    assert {e["reason"] for e in single} == {"ValueError: invalid message type: 99"}
    assert all(e["caller"].startswith("uid=0 pid=") and e["auth"] == "peer-uid" for e in single)


# -- 6. flow control waits for the job's own caller only --------------------------------------


def test_flow_control_waits_for_the_caller_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: the job's caller (attached before it starts) reads everything; a second
    follower that read once and went quiet (but stays "live") never holds the task."""
    from app_agent._jobs import job as _job
    from app_agent._registry import registry

    monkeypatch.setattr(_job, "FOLLOWER_GRACE", 3600.0)
    job = _job.Job("flow", registry.get("sampleapp.echo"), "test")  # type: ignore[arg-type]
    job.attach(1)
    job.events_since(0, 0, follower=2)  # someone else follows, once
    count = 3 * _job.MAX_EVENTS
    done = threading.Event()

    def task() -> None:
        job.thread = threading.get_ident()
        for i in range(count):
            job.write("stdout", f"{i}\n")
        done.set()

    threading.Thread(target=task, daemon=True).start()
    cursor, lines = 0, []
    while len(lines) < count:
        snapshot = job.events_since(cursor, DEADLINE, follower=1)
        assert snapshot["dropped"] == 0
        assert snapshot["events"], "the task stopped writing: it waits for the quiet follower"
        lines += [e["line"] for e in snapshot["events"]]
        cursor = snapshot["cursor"]
    assert done.wait(DEADLINE)
    assert lines == [str(i) for i in range(count)]
    assert job.events_since(0, 0, follower=2)["dropped"] == count - _job.MAX_EVENTS


def test_a_slow_follower_never_holds_the_job_back(sample_app: AppProcess, short_tmp: Path) -> None:
    """`rpcctl logs -f` of another reader that stops reading (its output pipe full) leaves
    the job at its caller's pace; it is told afterwards how many lines it missed."""
    grace = sample_app.rpcctl("rpc", "sampleapp.set_follower_grace(3600)")  # stays "live"
    assert grace.returncode == 0, grace.stderr
    gate = short_tmp / "gate"
    count = 60_000
    owner = popen_rpcctl(
        "-n", sample_app.node, "rpc", "--json", f'sampleapp.gated_lines("{gate}", {count})'
    )
    owned: list[str] = []
    reader = threading.Thread(target=lambda: owned.append(owner.communicate()[0]), daemon=True)
    slow = None
    try:
        reader.start()
        wait_until(lambda: listed_jobs(sample_app)[0]["task"] == "sampleapp.gated_lines")
        job_id = listed_jobs(sample_app)[0]["id"]
        slow = popen_rpcctl("-n", sample_app.node, "logs", job_id, "-f", "--json")
        assert slow.stdout is not None
        assert json.loads(slow.stdout.readline())["line"] == "ready"  # it follows; no more read
        gate.touch()
        reader.join(DEADLINE * 3)
        assert not reader.is_alive(), "the job waited for the slow follower"
        rest, _err = slow.communicate(timeout=DEADLINE)
    finally:
        for proc in (owner, slow):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert owner.returncode == 0
    *events, envelope = [json.loads(line) for line in owned[0].splitlines()]
    assert envelope == {"ok": True, "result": count}  # the caller missed nothing
    assert len(events) == count + 1
    *followed, summary = [json.loads(line) for line in rest.splitlines()]
    assert summary["result"]["state"] == "succeeded"
    missed = sum(e["count"] for e in followed if e["type"] == "dropped")
    assert missed > 0, "the slow follower was not told what it missed"
    # Every line but "ready" (read above) was shown or counted as missed.
    assert missed + len([e for e in followed if e["type"] == "stdout"]) == count


# -- 7. a profile ends with its client, or when cancelled -------------------------------------


def profiling(app: AppProcess) -> bool:
    """Whether the app's profiler thread runs (asked through `stack`, which starts none)."""
    stack = app.rpcctl("stack", "--json")
    assert stack.returncode == 0, stack.stderr
    threads = json.loads(stack.stdout)["result"]["threads"]
    return any(t["name"] == "rpcctl-profiler" for t in threads)


def test_a_profile_ends_when_its_client_goes_away(sample_app: AppProcess) -> None:
    hour = popen_rpcctl("-n", sample_app.node, "profile", "--seconds", "3600")
    try:
        wait_until(lambda: profiling(sample_app), what="the profile to start")
        hour.kill()
        hour.communicate()
        wait_until(lambda: not profiling(sample_app), what="the abandoned profile to end")
        after = sample_app.rpcctl("profile", "--seconds", "0.05", "--format", "collapsed")
        assert after.returncode == 0, after.stderr  # not "busy"
    finally:
        if hour.poll() is None:
            hour.kill()
            hour.communicate()
    finished = agent_events(sample_app, "profile.finished")
    assert finished[0]["ended"] == "the client went away"


def test_cancel_ends_a_profile(sample_app: AppProcess) -> None:
    hour = popen_rpcctl("-n", sample_app.node, "profile", "--seconds", "3600", "--json")
    try:
        wait_until(lambda: profiling(sample_app), what="the profile to start")
        busy = sample_app.rpcctl("profile", "--seconds", "1").stderr
        profile_id = re.search(r"`rpcctl cancel (profile-\d+)` ends it", busy)
        assert profile_id is not None, busy
        cancelled = sample_app.rpcctl("cancel", profile_id[1])
        assert (cancelled.returncode, cancelled.stdout) == (
            0,
            f"cancellation requested for job {profile_id[1]}\n",
        )
        out, err = hour.communicate(timeout=DEADLINE)
    finally:
        if hour.poll() is None:
            hour.kill()
            hour.communicate()
    assert hour.returncode == 0, err
    result = json.loads(out)["result"]
    assert result["id"] == profile_id[1]
    assert result["ended"].startswith("cancelled by uid=0 pid=")
    assert err.startswith("rpcctl: the profile ended early (cancelled by uid=0 pid=")
    again = sample_app.rpcctl("cancel", profile_id[1])
    assert (again.returncode, again.stderr) == (
        2,
        f"rpcctl: error: no profile '{profile_id[1]}' is running\n",
    )


# -- 8. log levels: one thread for every revert, a bound on them ------------------------------


def test_temporary_log_levels_share_one_thread_and_are_bounded() -> None:
    import logging

    from app_agent._introspection import loglevels as _loglevels

    levels = _loglevels.LogLevels()
    names = [f"rpcctl.test.many.{i}" for i in range(_loglevels.MAX_PENDING)]
    before = threading.active_count()
    reverted: list[str] = []
    try:
        for name in names:
            levels.set(name, logging.DEBUG, 3600)
        assert threading.active_count() - before == 1
        with pytest.raises(_loglevels.LevelError) as refused:
            levels.set("rpcctl.test.many.one_more", logging.DEBUG, 3600)
        assert str(refused.value) == (
            "1000 loggers already have a temporary level: set this one without --for, or wait "
            "for some to come back"
        )
        levels.set(names[0], logging.INFO, 3600)  # one already waiting may change
        levels.set("rpcctl.test.many.one_more", logging.INFO)  # and any, without --for
        levels.reset()
        assert all(logging.getLogger(n).level == logging.NOTSET for n in names)
        # Reverts come in the order they are due, whatever order they were set in.
        levels.set("rpcctl.test.later", logging.DEBUG, 0.4, lambda n, *_: reverted.append(n))
        levels.set("rpcctl.test.sooner", logging.DEBUG, 0.1, lambda n, *_: reverted.append(n))
        wait_until(lambda: len(reverted) == 2, what="both reverts")
        assert reverted == ["rpcctl.test.sooner", "rpcctl.test.later"]
        wait_until(lambda: threading.active_count() == before, what="the thread to end")
    finally:
        levels.reset()
        for name in [*names, "rpcctl.test.many.one_more"]:
            logging.getLogger(name).setLevel(logging.NOTSET)


def test_log_level_for_many_loggers_costs_one_thread(sample_app: AppProcess) -> None:
    with rpcctl.connect(sample_app.node) as app:
        before = app.stats()["threads"]["python"]
        for i in range(300):
            app.log_level("DEBUG", f"sampleapp.many.{i}", 600)
        after = app.stats()["threads"]["python"]
    assert after - before == 1


def test_access_denied_is_logged_at_a_bounded_rate(guarded_app: AppProcess) -> None:
    with connect_as(guarded_app, "probe") as probe:
        for _ in range(20):
            with pytest.raises(AuthenticationFailed):
                probe.tasks()
    log = agent_events(guarded_app, "access.denied", "access.denied_summary")
    single = [e for e in log if e["event"] == "access.denied"]
    assert len(single) + sum(e.get("denied", 0) for e in log) == 20
    assert 5 <= len(single) <= 10  # 5 a 10-second window
    assert {(e["identity"], e["grant"], e["reason"]) for e in single} == {
        ("probe", "read", "no read grant")
    }


def test_console_audit_lines_name_the_identity(short_tmp: Path) -> None:
    for name in ("ops", "access"):
        path = short_tmp / (f"{name}.cookie" if name != "access" else "access.toml")
        path.write_text(
            '[identity.ops]\ncookie_file = "ops.cookie"\nallow = ["console"]\n'
            if name == "access"
            else "ops-cookie-0123456789abcdef\n"
        )
        path.chmod(0o600)
    app = AppProcess(
        SAMPLEAPP,
        node=f"unix:{short_tmp}/run/agent.sock",
        env={"RPCCTL_ACCESS": str(short_tmp / "access.toml"), "RPCCTL_CONSOLE": "1"},
    )
    try:
        with rpcctl.connect(app.node, identity="ops", cookie_file=short_tmp / "ops.cookie") as c:
            c.console_open()
            c.console_push("1 + 1", 5.0)
            c.console_close()
    finally:
        log = agent_events(app)
        app.close()
    console = [e for e in log if e["event"].startswith("console.")]
    assert [e["event"] for e in console] == [
        "console.opened",
        "console.statement",
        "console.statement_finished",
        "console.closed",
    ]
    assert {e["identity"] for e in console} == {"ops"}


def test_exposed_methods_check_argument_types_before_touching_them(short_tmp: Path) -> None:
    """A caller's object reaches the agent as a netref; comparing or hashing it (say,
    `value in (...)`, as log_level() did) would call back into the caller. Every exposed
    method refuses one by its type alone, in each of its arguments."""
    import inspect

    import rpyc

    from app_agent._service import AgentService

    touched: list[str] = []

    class Prying(str):  # a str subclass: RPyC sends it by reference, as a netref
        def __eq__(self, other: object) -> bool:
            touched.append("__eq__")
            return False

        def __hash__(self) -> int:
            touched.append("__hash__")
            return 0

    methods = {
        name.removeprefix("exposed_"): len(inspect.signature(method).parameters) - 1
        for name, method in inspect.getmembers(AgentService, inspect.isfunction)
        if name.startswith("exposed_")
    }
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    replies = {}
    try:
        sock = open_rpc(wire.parse_node(app.node).path)
        conn = rpyc.connect_stream(
            rpyc.SocketStream(sock), config={"allow_all_attrs": True, "allow_pickle": False}
        )
        try:
            for name, arity in methods.items():
                for slot in range(arity):
                    args = [None] * arity
                    args[slot] = Prying("x")
                    replies[name, slot] = json.loads(getattr(conn.root, name)(*args))
        finally:
            conn.close()
    finally:
        app.close()
    assert touched == []
    assert {"log_level", "call", "run", "events", "cancel", "profile"} <= {n for n, _ in replies}
    assert {key: r["error"]["kind"] for key, r in replies.items() if r["ok"]} == {}
    # Refused by the table's declaration of its arguments, before anything touches them.
    assert replies["log_level", 0]["error"]["message"] == (
        "log_level() takes logger: str|none = None, level: str|int|none = None, "
        "for_s: float|none = None"
    )
    assert {r["error"]["reason"] for r in replies.values()} == {"bad_arguments"}


def test_a_cookie_exported_for_another_app_does_not_break_start(short_tmp: Path) -> None:
    """`bin/APP start` with RPCCTL_COOKIE exported (for another app): the release's own
    cookie file reaches its app and hooks, and the ambient cookie does not."""
    from test_runner import Release, _env

    cookie = short_tmp / "cookie"
    cookie.write_text("this-releases-cookie-0123456789\n")
    cookie.chmod(0o600)
    r = Release(
        short_tmp,
        {"post_start/10.sh": '"$RPCCTL" rpc \'add(20, 22)\' > "$RPCCTL_ROOT/answer"\n'},
        toml="",
    )
    r.config.write_text(
        r.config.read_text().replace(
            "[app]\n", '[app]\ncookie_file = "cookie"\nready_timeout = 10\n'
        )
    )
    r.proc = subprocess.Popen(
        [rpcctl_executable(), "--config", str(r.config), "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_env(), "RPCCTL_COOKIE": "another-apps-cookie-0123456789"},
    )
    try:
        answer = short_tmp / "answer"
        wait_until(lambda: answer.exists() and answer.read_text(), what="the post_start hook")
        assert answer.read_text() == "42\n"
        r.signal(15)
        assert r.wait()[0] == 0
    finally:
        r.close()


@pytest.mark.parametrize("kind", ["a FIFO", "a directory"])
def test_a_cookie_file_that_is_not_a_file_is_refused_at_once(short_tmp: Path, kind: str) -> None:
    path = short_tmp / "cookie"
    if kind == "a FIFO":
        os.mkfifo(path, 0o600)
    else:
        path.mkdir(mode=0o700)
    expected = f"cookie file {path} is not a regular file ({kind})"
    with pytest.raises(ConfigurationError) as refused:
        app_agent.start(node=f"unix:{short_tmp}/a.sock", cookie_file=path)
    assert str(refused.value) == expected
    result = run_rpcctl(
        "-n", f"unix:{short_tmp}/a.sock", "--cookie-file", str(path), "ping", timeout=DEADLINE
    )
    assert (result.returncode, result.stderr) == (2, f"rpcctl: error: {expected}\n")


@needs_root
def test_secret_files_of_another_user_are_refused_by_the_agent(short_tmp: Path) -> None:
    cookie = short_tmp / "cookie"
    cookie.write_text("someone-elses-cookie-0123456789\n")
    cookie.chmod(0o600)
    os.chown(cookie, NOBODY, NOBODY)
    who = f"belongs to uid {NOBODY} (nobody), who could change it, not to this process's user"
    with pytest.raises(ConfigurationError) as refused:
        app_agent.start(node=f"unix:{short_tmp}/a.sock", cookie_file=cookie)
    assert (
        str(refused.value) == f"cookie file {cookie} {who} (uid 0); fix it with: chown 0 {cookie}"
    )
    access = short_tmp / "access.toml"
    access.write_text('[identity.ops]\nunix_user = "root"\nallow = ["read"]\n')
    access.chmod(0o600)
    os.chown(access, NOBODY, NOBODY)
    with pytest.raises(ConfigurationError, match=re.escape(f"access file {access} {who}")):
        app_agent.start(node=f"unix:{short_tmp}/a.sock", access=access)
    # The client may read the app user's cookie (root operating an app of its own user).
    result = run_rpcctl("-n", f"unix:{short_tmp}/a.sock", "--cookie-file", str(cookie), "ping")
    assert result.returncode == 3, result.stderr  # read, then: no agent there
