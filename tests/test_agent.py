"""The embedded agent in this process: lifecycle, socket safety, the service's surface."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
import rpyc
from rpyc.core import consts
from rpyc.core.stream import SocketStream
from structlog.testing import capture_logs

import app_agent
import rpcctl
from app_agent import wire
from app_agent.exceptions import AddressInUse, AgentAlreadyRunning, ConfigurationError

NONCE = "0" * 32


def test_start_listens_and_stop_removes_the_socket(short_tmp: Path) -> None:
    sock_path = short_tmp / "run" / "deeper" / "agent.sock"
    agent = app_agent.start(node=f"unix:{sock_path}")
    try:
        assert app_agent.current() is agent
        # The directory it created is owner-only and the socket 0600.
        assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
        rpcctl.ping(agent.node)
        threads = {t.name for t in __import__("threading").enumerate()}
        assert "rpcctl-agent" in threads
    finally:
        agent.stop()
    assert not sock_path.exists()
    assert app_agent.current() is None
    with pytest.raises(rpcctl.Unreachable):
        rpcctl.ping(agent.node)


def test_second_start_in_one_process_is_an_error(agent_in_process: app_agent.Agent) -> None:
    with pytest.raises(AgentAlreadyRunning, match="already running"):
        app_agent.start(node="unix:/tmp/rpcctl-never.sock")


def test_node_comes_from_the_environment(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPCCTL_NODE", f"unix:{short_tmp}/env.sock")
    with app_agent.start() as agent:
        assert agent.node == f"unix:{short_tmp}/env.sock"
        rpcctl.ping()


def test_no_node_at_all_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RPCCTL_NODE", raising=False)
    with pytest.raises(ConfigurationError, match="RPCCTL_NODE"):
        app_agent.start()


def test_stale_socket_is_replaced(short_tmp: Path) -> None:
    path = short_tmp / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nothing listens
    with app_agent.start(node=f"unix:{path}") as agent:
        rpcctl.ping(agent.node)


def test_live_socket_is_refused_naming_the_path(agent_in_process: app_agent.Agent) -> None:
    path = agent_in_process.address.path
    app_agent._agent._forget(agent_in_process)  # pretend another process owns it
    try:
        with pytest.raises(AddressInUse, match=f"unix:{path}: another agent is already listening"):
            app_agent.start(node=f"unix:{path}")
    finally:
        app_agent._agent._current = agent_in_process
    rpcctl.ping(agent_in_process.node)


def test_a_non_socket_file_is_never_removed(short_tmp: Path) -> None:
    path = short_tmp / "data.txt"
    path.write_text("precious")
    with pytest.raises(ConfigurationError, match="not a socket"):
        app_agent.start(node=f"unix:{path}")
    assert path.read_text() == "precious"


def test_tcp_with_a_cookie_reports_its_port() -> None:
    with app_agent.start(node="tcp://127.0.0.1:0", cookie="s3cret-cookie") as agent:
        address = wire.parse_node(agent.node)
        assert address.port != 0
        with rpcctl.connect(agent.node, cookie="s3cret-cookie") as conn:
            assert conn.ping() == "pong"


@pytest.mark.parametrize(
    ("node", "says"),
    [
        ("tcp://127.0.0.1:0", "listens on TCP only with a cookie"),
        ("tcp://0.0.0.0:0", "listens on TCP only with a cookie"),
        ("tls://127.0.0.1:0", "listens on TCP only with a cookie"),
    ],
)
def test_tcp_without_a_cookie_is_refused(node: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=says):
        app_agent.start(node=node)
    assert app_agent.current() is None


def test_tls_without_a_certificate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a certificate and key"):
        app_agent.start(node="tls://127.0.0.1:0", cookie="c")


def test_beyond_loopback_without_tls_warns() -> None:
    with capture_logs() as logs, app_agent.start(node="tcp://0.0.0.0:0", cookie="c"):
        pass
    warning = next(e for e in logs if e["event"] == "agent.insecure_transport")
    assert warning["log_level"] == "warning"
    assert "use tls://" in warning["reason"]


def _raw_rpyc(node: str) -> rpyc.Connection:
    path = wire.parse_node(node).path
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "op": "rpc", "nonce": NONCE}))
    assert b'"ok":true' in sock.recv(100)
    return rpyc.utils.factory.connect_stream(SocketStream(sock))


@pytest.mark.parametrize(
    "attribute",
    ["_state", "__class__", "__init__", "on_connect", "_conn", "run_after_reply", "_prepare"],
)
def test_only_the_exposed_methods_are_reachable(
    agent_in_process: app_agent.Agent, attribute: str
) -> None:
    conn = _raw_rpyc(agent_in_process.node)
    try:
        assert conn.root.ping() == "pong"
        # Ask the agent directly (a netref answers some dunder names locally).
        with pytest.raises(AttributeError, match="cannot access"):
            conn.sync_request(consts.HANDLE_GETATTR, conn.root, attribute)
        with pytest.raises(AttributeError):
            conn.sync_request(consts.HANDLE_CALLATTR, conn.root, attribute, (), ())
    finally:
        conn.close()
    rpcctl.ping(agent_in_process.node)


def test_netrefs_are_refused_as_arguments(agent_in_process: app_agent.Agent) -> None:
    conn = _raw_rpyc(agent_in_process.node)
    try:
        # A list is sent as a netref by RPyC; the agent must not touch it.
        reply = wire.loads(conn.root.call("sampleapp.echo", ["not", "json", "text"]))
        assert reply["ok"] is False
        assert reply["error"]["kind"] == "usage"
    finally:
        conn.close()


def test_peer_uid_not_allowed_is_refused(short_tmp: Path) -> None:
    with app_agent.start(node=f"unix:{short_tmp}/a.sock", allowed_uids=[os.geteuid() + 12345]):
        with pytest.raises(rpcctl.AuthenticationFailed, match=r"peer uid .* is not allowed") as exc:
            rpcctl.ping(f"unix:{short_tmp}/a.sock")
        assert exc.value.exit_code == 5


def test_protocol_version_mismatch_names_both_versions(agent_in_process: app_agent.Agent) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(agent_in_process.address.path)
    sock.sendall(wire.encode_line({"rpcctl": 99, "op": "rpc", "nonce": NONCE}))
    answer = wire.decode_line(sock.recv(1000))
    sock.close()
    assert answer["ok"] is False
    assert "client speaks 99" in answer["message"]
    assert f"agent speaks {wire.PROTOCOL_VERSION}" in answer["message"]


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00" * 10, b"GET / HTTP/1.1\r\n\r\n", b"x" * 10000, b'{"rpcctl": 1}\n', b"\n\n\n"],
)
def test_garbage_never_hurts_the_agent(agent_in_process: app_agent.Agent, garbage: bytes) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(agent_in_process.address.path)
    try:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(5)
        while sock.recv(4096):
            pass
    except OSError:
        pass  # the agent may drop us mid-send: that is the point
    finally:
        sock.close()
    rpcctl.ping(agent_in_process.node)
