"""Hardening: the attacks and faults of the hostile trial, each kept fixed by a test.

Authenticated records on cookie connections (relay takeover, alteration, replay, injection,
truncation), the client's check of who listens on a UNIX socket, one handshake deadline per
connection, malformed pre-auth lines, refusals logged at a bounded rate, over-long cookie
files, the connection cap and idle connections, and a connect flood.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import app_agent
import sampleapp  # noqa: F401  (registers the tasks the in-process agents serve)
from app_agent import wire
from app_agent.exceptions import ConfigurationError
from app_agent.wire import cookies
from conftest import (
    DEADLINE,
    NOBODY,
    ROOT,
    SAMPLEAPP,
    AppProcess,
    Relay,
    as_user,
    needs_root,
    open_rpc,
    run_rpcctl,
    tcp_sample_app,
    wait_until,
)

COOKIE = "hardening-cookie-0123456789abcdef"
FLOOD = ROOT / "bench" / "flood.py"  # the benchmark's connect flood, bounded in time


def agent_log(app: AppProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]


def events(app: AppProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in agent_log(app) if e["event"] == name]


@pytest.fixture
def tcp_app() -> Iterator[AppProcess]:
    """sampleapp on tcp:// with a cookie: the transport an on-path relay can reach."""
    app = tcp_sample_app(COOKIE)
    try:
        yield app
    finally:
        app.close()


# -- 1. an on-path relay cannot take over, alter, replay or inject --------------------------


def flip(data: bytes, _dst: socket.socket) -> bytes:
    """Alter one byte of the payload of the first record."""
    return data[:6] + bytes([data[6] ^ 0x01]) + data[7:]


def replay(data: bytes, _dst: socket.socket) -> bytes:
    return data + data


def inject(data: bytes, dst: socket.socket) -> bytes:
    """Speak RPyC on the authenticated socket before the client does: a forged record."""
    forged = os.urandom(40)
    dst.sendall(len(forged).to_bytes(4, "big") + forged + os.urandom(16))
    return data


def truncate(data: bytes, dst: socket.socket) -> bytes:
    dst.sendall(data[: len(data) // 2])
    dst.shutdown(socket.SHUT_WR)
    raise OSError("relay cut the record")


@pytest.mark.parametrize(
    ("mutation", "says"),
    [
        (flip, "the agent found our request altered on the way"),
        (replay, "the agent found our request altered on the way"),
        (inject, "the agent found our request altered on the way"),
    ],
)
def test_a_relay_cannot_alter_replay_or_inject_requests(
    tcp_app: AppProcess, mutation: Callable[[bytes, socket.socket], bytes], says: str
) -> None:
    relay = Relay(tcp_app.node, to_agent=mutation)
    try:
        result = run_rpcctl(
            "-n", relay.node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": COOKIE}, timeout=DEADLINE
        )
    finally:
        relay.close()
    assert result.returncode == 5, result.stderr
    assert says in result.stderr
    assert "tampered with the connection" in result.stderr
    # The agent serves on, the refusal is audited, and nothing ran for the relay.
    direct = run_rpcctl("-n", tcp_app.node, "rpc", "add(2, 2)", env={"RPCCTL_COOKIE": COOKIE})
    assert (direct.returncode, direct.stdout) == (0, "4\n"), direct.stderr
    log = agent_log(tcp_app)
    tampered = [e for e in log if e["event"] == "connection.tampered"]
    assert len(tampered) == 1
    assert tampered[0]["auth"] == "cookie"
    assert len([e for e in log if e["event"] == "call.finished"]) == 1


def test_a_relay_cannot_alter_replies(tcp_app: AppProcess) -> None:
    relay = Relay(tcp_app.node, to_client=flip)
    try:
        result = run_rpcctl("-n", relay.node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": COOKIE})
    finally:
        relay.close()
    assert result.returncode == 5
    assert "the agent's reply failed its integrity check" in result.stderr


def test_a_truncated_record_ends_only_that_connection(tcp_app: AppProcess) -> None:
    relay = Relay(tcp_app.node, to_agent=truncate)
    try:
        result = run_rpcctl("-n", relay.node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": COOKIE})
    finally:
        relay.close()
    assert result.returncode != 0
    ok = run_rpcctl("-n", tcp_app.node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": COOKIE})
    assert ok.stdout == "3\n"
    tampered = events(tcp_app, "connection.tampered")
    assert [e["reason"] for e in tampered] == ["the stream ended inside a record"]


def test_a_faithful_relay_changes_nothing(tcp_app: AppProcess) -> None:
    """The records are end to end: forwarding them unchanged is just a longer wire."""
    relay = Relay(tcp_app.node)
    try:
        result = run_rpcctl("-n", relay.node, "rpc", "add(1, 2)", env={"RPCCTL_COOKIE": COOKIE})
    finally:
        relay.close()
    assert (result.returncode, result.stdout) == (0, "3\n"), result.stderr


def test_the_agent_answer_is_covered_by_its_proof(tcp_app: AppProcess) -> None:
    """A relay that rewrites the final handshake answer (say, ready=false) is caught."""
    address = wire.parse_node(tcp_app.node)
    listener = socket.create_server(("127.0.0.1", 0))

    def rewrite() -> None:
        client, _ = listener.accept()
        agent = socket.create_connection((address.host, address.port))
        with client, agent:
            agent.sendall(client.recv(4096))  # hello
            client.sendall(agent.recv(4096))  # challenge
            agent.sendall(client.recv(4096))  # proof
            answer = json.loads(agent.recv(4096))
            answer["ready"] = False
            client.sendall(wire.encode_line(answer))

    thread = threading.Thread(target=rewrite, daemon=True)
    thread.start()
    node = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    result = run_rpcctl("-n", node, "ping", env={"RPCCTL_COOKIE": COOKIE})
    thread.join(DEADLINE)
    listener.close()
    assert result.returncode == 5
    assert "or its answer was altered" in result.stderr


# -- 2. the client checks who listens on a UNIX socket ---------------------------------------


@needs_root
def test_an_impostor_of_another_uid_gets_nothing(short_tmp: Path) -> None:
    """A process of another uid listening on the path (here: root's own 0700 directory,
    the socket bound by root and listened on after dropping to nobody) is refused before a
    single byte is sent to it."""
    path = str(short_tmp / "agent.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    os.chmod(path, 0o666)  # noqa: S103  (the impostor's socket: anyone may connect)
    received_r, received_w = os.pipe()

    def impostor() -> None:
        listener.listen()
        conn, _ = listener.accept()
        data = conn.recv(4096)
        os.write(received_w, b"got:" + data)

    child = as_user(NOBODY, impostor)
    os.close(received_w)
    listener.close()
    try:
        result = run_rpcctl("-n", f"unix:{path}", "rpc", "add(1, 2)", timeout=DEADLINE)
    finally:
        with os.fdopen(received_r, "rb") as pipe:
            got = pipe.read()
        os.waitpid(child, 0)
    assert result.returncode == 5
    assert f"uid {NOBODY}" in result.stderr
    assert "may be an impostor" in result.stderr
    assert got == b"got:"  # it saw a connection, then nothing: no hello, no call


@needs_root
@pytest.mark.parametrize("mode", [0o1777, 0o777, 0o770])
def test_a_socket_in_a_directory_others_can_write_is_refused(
    agent_in_process: app_agent.Agent, mode: int
) -> None:
    directory = os.path.dirname(wire.parse_node(agent_in_process.node).path)
    os.chmod(directory, mode)
    try:
        result = run_rpcctl("-n", agent_in_process.node, "ping")
    finally:
        os.chmod(directory, 0o700)
    assert result.returncode == 5
    assert f"its directory {directory} is writable by" in result.stderr
    assert f"(mode {mode:04o})" in result.stderr
    assert run_rpcctl("-n", agent_in_process.node, "ping").returncode == 0


# -- 3. one handshake deadline per connection ------------------------------------------------


def dribble(host_or_path: Any, family: int, first: bytes, byte: bytes) -> int:
    """Send *first*, then one byte at a time, each time giving the agent 0.2 s to hang up;
    the number of bytes dribbled before it did (the test fails if it never does)."""
    with socket.socket(family) as sock:
        sock.connect(host_or_path)
        sock.sendall(first)
        for count in range(int(DEADLINE / 0.2)):
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable:
                with contextlib.suppress(OSError):
                    while sock.recv(4096):
                        pass
                return count
            try:
                sock.sendall(byte)
            except OSError:
                return count
    pytest.fail("the agent kept a connection that sends one byte at a time")


def test_a_slow_handshake_is_dropped_at_its_deadline(sample_app: AppProcess) -> None:
    path = wire.parse_node(sample_app.node).path
    dribbled = dribble(path, socket.AF_UNIX, b'{"rpcctl": 3, "op": "ping", "nonce": "', b"a")
    assert dribbled < 32  # a valid nonce is never completed: the deadline came first
    timed_out = [e for e in events(sample_app, "connection.refused")]
    assert [e["reason"] for e in timed_out] == ["handshake timed out"]


def test_a_slow_tls_handshake_is_dropped_at_its_deadline(tls_files: dict[str, str]) -> None:
    with app_agent.start(
        node="tls://127.0.0.1:0", cookie=COOKIE, tls_cert=tls_files["server"]
    ) as agent:
        address = wire.parse_node(agent.node)
        # A TLS record header announcing 512 bytes, whose body never quite arrives.
        dribble((address.host, address.port), socket.AF_INET, b"\x16\x03\x01\x02\x00", b"\x00")
        with app_agent_client(agent.node, tls_files) as app:
            assert app.ping() == "pong"


@contextlib.contextmanager
def app_agent_client(node: str, tls_files: dict[str, str]) -> Iterator[Any]:
    import rpcctl

    with rpcctl.connect(node, cookie=COOKIE, tls_ca=tls_files["ca"]) as app:
        yield app


# -- 4. malformed pre-auth lines: clean, audited refusals ------------------------------------


MALFORMED = {
    "deep nesting": b'{"rpcctl": ' + b"[" * 2000 + b"]" * 2000 + b"}\n",
    "nested values": b'{"rpcctl": 3, "op": {"x": 1}, "nonce": "' + b"a" * 32 + b'"}\n',
    "not UTF-8": b'{"rpcctl": 3, "op": "\xff\xfe"}\n',
    "version of the wrong type": b'{"rpcctl": "2", "op": "ping", "nonce": "' + b"a" * 32 + b'"}\n',
    "op of the wrong type": b'{"rpcctl": 3, "op": 7, "nonce": "' + b"a" * 32 + b'"}\n',
    "nonce of the wrong type": b'{"rpcctl": 3, "op": "ping", "nonce": 12345}\n',
    "identity of the wrong type": b'{"rpcctl": 3, "op": "ping", "nonce": "'
    + b"a" * 32
    + b'", "identity": 7}\n',
    "identity with a newline": b'{"rpcctl": 3, "op": "ping", "nonce": "'
    + b"a" * 32
    + b'", "identity": "ops\\nagent"}\n',
}


def raw_exchange(path: str, lines: list[bytes]) -> list[bytes]:
    """Send each line and read the agent's answer to it (b"" once it has hung up)."""
    answers = []
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(DEADLINE)
        sock.connect(path)
        for line in lines:
            try:
                sock.sendall(line)
                answers.append(sock.recv(4096))
            except OSError:
                answers.append(b"")
    return answers


def test_malformed_pre_auth_lines_are_clean_audited_refusals(short_tmp: Path) -> None:
    app = AppProcess(
        SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock", env={"RPCCTL_COOKIE": COOKIE}
    )
    try:
        path = wire.parse_node(app.node).path
        for line in MALFORMED.values():
            raw_exchange(path, [line])
        # A non-ASCII proof, and one of the wrong type, after a valid hello.
        for proof in ("é" * 64, 12345, ["x"]):
            hello = {"rpcctl": wire.PROTOCOL_VERSION, "op": "ping", "nonce": cookies.new_nonce()}
            second = (json.dumps({"rpcctl": 3, "proof": proof}) + "\n").encode()
            raw_exchange(path, [wire.encode_line(hello), second])
        ping = run_rpcctl("-n", app.node, "ping", env={"RPCCTL_COOKIE": COOKIE})
        assert ping.stdout == "pong\n"
        stderr = app.stderr()
    finally:
        app.close()
    assert "Traceback" not in stderr
    log = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    refused = [e for e in log if e["event"] in ("connection.refused", "connection.refused_summary")]
    counted = sum(e.get("refused", 1) for e in refused)
    assert counted == len(MALFORMED) + 3
    assert all(e.get("reason") or e.get("reasons") for e in refused)


def test_a_flood_of_bad_connections_writes_a_bounded_log(short_tmp: Path) -> None:
    app = AppProcess(SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock")
    try:
        path = wire.parse_node(app.node).path
        for _ in range(2000):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(path)
                sock.sendall(b"garbage\n")
        assert run_rpcctl("-n", app.node, "ping").stdout == "pong\n"
        stderr = app.stderr()
    finally:
        app.close()
    assert len(stderr) < 20_000  # 2,000 refusals one line each would be ~300 KB
    log = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    single = [e for e in log if e["event"] == "connection.refused"]
    summaries = [e for e in log if e["event"] == "connection.refused_summary"]
    assert len(single) + sum(e["refused"] for e in summaries) == 2000
    assert summaries
    assert all("not an rpcctl handshake" in str(e["reasons"]) for e in summaries)


# -- 5. a cookie file longer than the limit is refused, never cut --------------------------


def test_an_over_long_cookie_file_is_refused_on_both_sides(short_tmp: Path) -> None:
    path = short_tmp / "cookie"
    path.write_text("x" * (cookies.MAX_COOKIE_BYTES + 1))
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match="longer than 4096 bytes"):
        app_agent.start(node=f"unix:{short_tmp}/a.sock", cookie_file=path)
    result = run_rpcctl("-n", f"unix:{short_tmp}/a.sock", "--cookie-file", str(path), "ping")
    assert result.returncode == 2
    assert f"cookie file {path} is longer than 4096 bytes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- 10. the connection cap never locks out ping; idle connections time out -----------------


def test_ping_answers_at_the_connection_cap(sample_app: AppProcess) -> None:
    path = wire.parse_node(sample_app.node).path
    held = []
    try:
        for _ in range(256):
            held.append(open_rpc(path))
        ping = sample_app.rpcctl("ping")
        assert (ping.returncode, ping.stdout) == (0, "pong\n"), ping.stderr
        over = sample_app.rpcctl("info")
        assert over.returncode == 3
        assert "the agent serves as many connections as it may" in over.stderr
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: sample_app.rpcctl("info").returncode == 0, what="room again")


def test_idle_connections_are_closed(short_tmp: Path) -> None:
    app = AppProcess(
        SAMPLEAPP, node=f"unix:{short_tmp}/run/agent.sock", env={"RPCCTL_IDLE_TIMEOUT": "0.5"}
    )
    try:
        with open_rpc(wire.parse_node(app.node).path) as sock:
            readable, _, _ = select.select([sock], [], [], DEADLINE)
            assert readable
            assert sock.recv(4096) == b""  # the agent hung up
        idle = events(app, "connection.idle_closed")
    finally:
        app.close()
    assert [e["idle_s"] for e in idle] == [0.5]


def test_a_bad_idle_timeout_is_a_configuration_error(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPCCTL_IDLE_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="RPCCTL_IDLE_TIMEOUT='soon'"):
        app_agent.start(node=f"unix:{short_tmp}/a.sock")


# -- 13. a connect flood from two processes does not fail pings -----------------------------


def test_pings_answer_through_a_connect_flood(sample_app: AppProcess) -> None:
    path = wire.parse_node(sample_app.node).path
    flooders = [
        subprocess.Popen(
            [sys.executable, str(FLOOD), path, str(DEADLINE)], stdout=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        results = [sample_app.rpcctl("ping", "--timeout", "1") for _ in range(10)]
    finally:
        for proc in flooders:
            proc.kill()
            proc.wait()
    failed = [r.stderr for r in results if r.returncode != 0]
    assert failed == []
    assert sample_app.alive()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    import trustme

    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": str(directory / "ca.pem"), "server": str(directory / "server.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    server.private_key_and_cert_chain_pem.write_to_path(paths["server"])
    return paths
