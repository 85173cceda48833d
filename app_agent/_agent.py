"""The agent's lifecycle: the listening socket, the server thread, start/stop, the singleton."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterable
from typing import Any

from rpyc.utils.helpers import classpartial
from rpyc.utils.server import ThreadedServer

from app_agent import wire
from app_agent._logging import get_logger
from app_agent._registry import Registry, import_task_modules, registry
from app_agent._service import PROTOCOL_CONFIG, AgentService, AgentState
from app_agent.exceptions import AddressInUse, AgentAlreadyRunning, ConfigurationError
from app_agent.wire import Address, ErrorKind

# RPyC logs every accepted connection at INFO through stdlib logging; the agent logs its own
# events with structlog, so RPyC's chatter is kept to warnings and above.
_rpyc_logger = logging.getLogger("app_agent.rpyc")
_rpyc_logger.setLevel(logging.WARNING)

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, NUL included


class _Server(ThreadedServer):  # type: ignore[misc]
    """RPyC's ThreadedServer with rpcctl's handshake in front of every connection."""

    def __init__(self, agent: Agent, **kwargs: Any) -> None:
        self._agent = agent
        super().__init__(
            classpartial(AgentService, agent.state),
            protocol_config=dict(PROTOCOL_CONFIG),
            logger=_rpyc_logger,
            auto_register=False,
            # A blocking accept: the idle agent costs nothing (RPyC's default polls twice a second).
            listener_timeout=None,
            **kwargs,
        )

    def _accept_method(self, sock: socket.socket) -> None:
        threading.Thread(
            target=self._authenticate_and_serve_client,
            args=(sock,),
            name="rpcctl-agent-conn",
            daemon=True,
        ).start()

    def _authenticate_and_serve_client(self, sock: socket.socket) -> None:
        try:
            peer = self._agent._handshake(sock)
            if peer is not None:
                self._serve_client(sock, {"peer": peer})
        except (OSError, EOFError) as exc:
            # A peer that vanished mid-conversation ends only its own connection.
            self._agent.log.debug("connection.closed", error=repr(exc))
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            self.clients.discard(sock)


class Agent:
    """A running agent: an RPyC server on a background daemon thread."""

    def __init__(
        self,
        address: Address,
        registry: Registry,
        app: str,
        allowed_uids: Iterable[int] | None = None,
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.log = get_logger()
        self.state = AgentState(registry, node=str(address), app=app, log=self.log)
        self.state.stop_handler = on_stop
        self._allowed_uids = (
            frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.geteuid(), 0})
        )
        self._socket_inode: tuple[int, int] | None = None
        self._stopped = threading.Event()
        self._server = self._bind()
        self._thread = threading.Thread(target=self._server.start, name="rpcctl-agent", daemon=True)

    @property
    def node(self) -> str:
        """The address callers use, with the real port when the agent bound port 0."""
        return self.state.node

    # -- binding ---------------------------------------------------------------------------

    def _bind(self) -> _Server:
        if self.address.is_unix:
            return self._bind_unix(self.address.path)
        if self.address.scheme == "tls":
            msg = f"{self.address}: TLS is not supported yet; use unix:PATH or loopback tcp://"
            raise ConfigurationError(msg)
        if not self.address.is_loopback:
            msg = (
                f"{self.address}: the agent binds TCP on loopback only until cookie "
                "authentication is configured; use tcp://127.0.0.1:PORT or a unix: socket"
            )
            raise ConfigurationError(msg)
        try:
            server = _Server(
                self,
                hostname=self.address.host,
                port=self.address.port,
                ipv6=":" in self.address.host,
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                msg = f"{self.address}: the address is already in use"
                raise AddressInUse(msg) from None
            raise
        host, port = server.listener.getsockname()[:2]
        self.state.node = str(Address("tcp", host=host, port=port))
        return server

    def _bind_unix(self, path: str) -> _Server:
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            msg = f"unix:{path}: the socket path is longer than {_UNIX_PATH_MAX} bytes"
            raise ConfigurationError(msg)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            # Owner-only: nobody else may even reach the socket file.
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._clear_stale_socket(path)
        server = _Server(self, socket_path=path)
        os.chmod(path, 0o600)
        st = os.stat(path)
        self._socket_inode = (st.st_dev, st.st_ino)
        return server

    @staticmethod
    def _clear_stale_socket(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            msg = f"unix:{path}: the path exists and is not a socket; remove it or pick another"
            raise ConfigurationError(msg)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: left behind by a process that died
            return
        except OSError as exc:
            msg = f"unix:{path}: cannot tell whether another agent listens there ({exc})"
            raise AddressInUse(msg) from None
        finally:
            probe.close()
        msg = f"unix:{path}: another agent is already listening on this socket"
        raise AddressInUse(msg)

    # -- lifecycle -------------------------------------------------------------------------

    def _start(self) -> None:
        self._server._listen()
        self._thread.start()
        self.log.info("agent.started", node=self.node, app=self.state.app, pid=os.getpid())

    def stop(self) -> None:
        """Close the server and every connection, and remove the socket file."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.close()
        self._thread.join(timeout=5)
        if self.address.is_unix and self._socket_inode is not None:
            self._remove_own_socket(self.address.path)
        _forget(self)
        self.log.info("agent.stopped", node=self.node)

    def _remove_own_socket(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        # Only our own socket: another agent may have replaced it since.
        if (st.st_dev, st.st_ino) == self._socket_inode:
            os.unlink(path)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the handshake (runs on the connection's thread) -------------------------------------

    def _handshake(self, sock: socket.socket) -> str | None:
        """Check the peer and read its hello; the peer's description, or None when done."""
        peer = self._describe_peer(sock)
        log = self.log.bind(peer=peer)
        refusal = self._check_peer(sock)
        if refusal is not None:
            log.warning("connection.refused", reason=refusal)
            self._reply(sock, ok=False, kind=ErrorKind.AUTH, message=refusal)
            return None
        sock.settimeout(wire.HANDSHAKE_TIMEOUT)
        try:
            hello = wire.decode_line(_read_line(sock))
        except TimeoutError:
            log.info("connection.refused", reason="handshake timed out")
            return None
        except ValueError as exc:
            log.info("connection.refused", reason=str(exc))
            return None
        version = hello.get("rpcctl")
        if version != wire.PROTOCOL_VERSION:
            reason = (
                f"protocol version mismatch: the client speaks {version!r}, "
                f"this agent speaks {wire.PROTOCOL_VERSION}"
            )
            log.warning("connection.refused", reason=reason)
            self._reply(sock, ok=False, kind=ErrorKind.USAGE, message=reason)
            return None
        op = hello.get("op")
        if op == "ping":
            self._reply(sock, ok=True, pong=True)
            return None
        if op != "rpc":
            self._reply(sock, ok=False, kind=ErrorKind.USAGE, message=f"unknown operation {op!r}")
            return None
        self._reply(sock, ok=True)
        sock.settimeout(None)
        log.debug("connection.accepted")
        return peer

    @staticmethod
    def _reply(sock: socket.socket, **fields: Any) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, **fields}))

    def _describe_peer(self, sock: socket.socket) -> str:
        if sock.family == socket.AF_UNIX:
            pid, uid, _gid = _peer_credentials(sock)
            return f"uid={uid} pid={pid}"
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"

    def _check_peer(self, sock: socket.socket) -> str | None:
        if sock.family != socket.AF_UNIX:
            return None
        _pid, uid, _gid = _peer_credentials(sock)
        if uid not in self._allowed_uids:
            return f"peer uid {uid} is not allowed (allowed: {sorted(self._allowed_uids)})"
        return None


def _peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _read_line(sock: socket.socket) -> bytes:
    """One handshake line. The client waits for our answer before it sends anything more,
    so reading past the newline cannot swallow the start of an RPyC frame."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(wire.MAX_HELLO_BYTES - len(data))
        if not chunk:
            msg = "connection closed during the handshake"
            raise ValueError(msg)
        data += chunk
        if len(data) >= wire.MAX_HELLO_BYTES and not data.endswith(b"\n"):
            msg = "handshake line too long"
            raise ValueError(msg)
    if data.count(b"\n") != 1:
        msg = "data after the handshake line"
        raise ValueError(msg)
    return data


# -- the process-wide singleton -----------------------------------------------------------

_lock = threading.Lock()
_current: Agent | None = None


def _forget(agent: Agent) -> None:
    global _current
    with _lock:
        if _current is agent:
            _current = None


def start(
    node: str | None = None,
    tasks: Iterable[str] = (),
    *,
    app: str | None = None,
    allowed_uids: Iterable[int] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Agent:
    """Start this process's agent and return it once it listens.

    *node* defaults to ``RPCCTL_NODE``; *tasks* names modules to import so their ``@task``
    functions register; *app* defaults to ``RPCCTL_APP`` or the program's name. On a UNIX
    socket only the agent's own euid and root may connect, unless *allowed_uids* says
    otherwise. *on_stop* is what ``rpcctl stop`` runs (on its own thread) when the app is
    not under ``rpcctl start``; by default the process sends itself SIGTERM.
    """
    global _current
    with _lock:
        if _current is not None:
            msg = f"an agent is already running in this process on {_current.node}"
            raise AgentAlreadyRunning(msg)
        text = node if node is not None else os.environ.get(wire.NODE_ENV)
        if not text:
            msg = f"no node address: pass node= or set {wire.NODE_ENV} (e.g. unix:run/app.sock)"
            raise ConfigurationError(msg)
        try:
            address = wire.parse_node(text)
        except wire.AddressError as exc:
            raise ConfigurationError(str(exc)) from None
        import_task_modules(tasks)
        agent = Agent(
            address,
            registry,
            app=app or _default_app_name(),
            allowed_uids=allowed_uids,
            on_stop=on_stop,
        )
        agent._start()
        _current = agent
        return agent


def current() -> Agent | None:
    """The running agent of this process, if any."""
    return _current


def _default_app_name() -> str:
    import sys

    return os.environ.get("RPCCTL_APP") or os.path.basename(sys.argv[0] or "python")
