"""Records and frames read against deadlines and caps (issue #20 items 3-5): a record that never
ends is exit 5 or 4, never a hang; a frame once begun must arrive; grants are checked before
arguments are held, and argument and frame sizes are bounded before anything inflates."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import struct
import subprocess
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
    SAMPLEAPP,
    AppProcess,
    Relay,
    agent_events,
    open_rpc,
    run_rpcctl,
    wait_until,
)
from rpcctl.exceptions import AuthenticationFailed, CallTimeout, UsageError


def connect_as(app: AppProcess, identity: str) -> rpcctl.Client:
    cookie = Path(app.env["RPCCTL_ACCESS"]).parent / f"{identity}.cookie"
    return rpcctl.connect(app.node, identity=identity, cookie_file=cookie, timeout=DEADLINE)


# -- 3. a record that never ends: exit 5 or 4, never a hang -----------------------------------

COOKIE = "hardening2-cookie-0123456789abcdef"


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
