"""The agent's lifecycle: the listening socket, the server thread, start/stop, the singleton."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
import stat
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from rpyc.core import Channel
from rpyc.utils.helpers import classpartial
from rpyc.utils.server import ThreadedServer

from app_agent import _auth, _capture, wire
from app_agent import _readiness as readiness
from app_agent._gate import Gate, describe_peer, server_tls_context
from app_agent._locks import Backend, MemoryLocks
from app_agent._locks import backend as lock_backends
from app_agent._logging import get_logger
from app_agent._registry import Registry, import_task_modules, registry
from app_agent._service import PROTOCOL_CONFIG, AgentService, AgentState
from app_agent._stream import TLSAwareStream
from app_agent.exceptions import AddressInUse, AgentAlreadyRunning, ConfigurationError
from app_agent.wire import Address

# RPyC logs every accepted connection at INFO through stdlib logging; the agent logs its own
# events with structlog, so RPyC's chatter is kept to warnings and above.
_rpyc_logger = logging.getLogger("app_agent.rpyc")
_rpyc_logger.setLevel(logging.WARNING)

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, NUL included


class _Server(ThreadedServer):  # type: ignore[misc]
    """RPyC's ThreadedServer with rpcctl's gate in front of every connection."""

    def __init__(self, agent: Agent, **kwargs: Any) -> None:
        self._agent = agent
        # Idle or slow peers must not starve real callers. Established connections are
        # capped (past the cap a new one is closed at once); connections still in their
        # handshake are capped too, and a new arrival evicts the oldest of those: a real
        # handshake takes a millisecond, so only a stalled peer is ever old enough to go.
        self._connections = threading.BoundedSemaphore(agent.max_connections)
        self._pending_lock = threading.Lock()
        self._pending: dict[socket.socket, None] = {}  # insertion-ordered: oldest first
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
        if not self._connections.acquire(blocking=False):
            self._agent.log.warning(
                "connection.refused", peer=describe_peer(sock), reason="too many connections"
            )
            self.clients.discard(sock)
            sock.close()
            return
        with self._pending_lock:
            if len(self._pending) >= self._agent.max_handshakes:
                oldest = next(iter(self._pending))
                del self._pending[oldest]
                self._agent.log.warning(
                    "connection.evicted",
                    peer=describe_peer(oldest),
                    reason="still in its handshake while newer connections wait",
                )
                # Wakes the stalled recv on that connection's thread, which then cleans up.
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)
            self._pending[sock] = None
        threading.Thread(
            target=self._authenticate_and_serve_client,
            args=(sock,),
            name="rpcctl-agent-conn",
            daemon=True,
        ).start()

    def _handshake_done(self, sock: socket.socket) -> None:
        with self._pending_lock:
            self._pending.pop(sock, None)

    def _authenticate_and_serve_client(self, sock: socket.socket) -> None:
        served = sock
        try:
            admitted = self._agent.gate.admit(sock)
            self._handshake_done(sock)
            if admitted is not None:
                served, credentials = admitted
                self._serve_client(served, credentials)
        except (OSError, EOFError) as exc:
            # A peer that vanished mid-conversation ends only its own connection.
            self._agent.log.debug("connection.closed", error=repr(exc))
        finally:
            self._handshake_done(sock)
            self._connections.release()
            for s in {served, sock}:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.clients.discard(sock)

    def _serve_client(self, sock: socket.socket, credentials: dict[str, str]) -> None:
        config = dict(self.protocol_config, credentials=credentials, logger=self.logger)
        conn = self.service._connect(Channel(TLSAwareStream(sock)), config)
        self._handle_connection(conn)


class Agent:
    """A running agent: an RPyC server on a background daemon thread."""

    def __init__(
        self,
        address: Address,
        registry: Registry,
        app: str,
        allowed_uids: Iterable[int] | None = None,
        on_stop: Callable[[], None] | None = None,
        cookie: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 256,
        max_handshakes: int = 32,
        locks: Backend | None = None,
        loop: Any = None,
    ) -> None:
        self.address = address
        self.log = get_logger()
        self.state = AgentState(
            registry,
            node=str(address),
            app=app,
            log=self.log,
            locks=locks or MemoryLocks(),
            loop=loop,
        )
        self.state.stop_handler = on_stop
        self.max_connections = max_connections
        self.max_handshakes = max_handshakes
        uids = frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.geteuid(), 0})
        self._check_transport(address, cookie, tls)
        self.gate = Gate(self.log, uids, cookie, tls)
        self._socket_inode: tuple[int, int] | None = None
        self._stopped = threading.Event()
        self._server = self._bind()
        self._thread = threading.Thread(target=self._server.start, name="rpcctl-agent", daemon=True)

    @property
    def node(self) -> str:
        """The address callers use, with the real port when the agent bound port 0."""
        return self.state.node

    # -- binding ---------------------------------------------------------------------------

    def _check_transport(
        self, address: Address, cookie: bytes | None, tls: ssl.SSLContext | None
    ) -> None:
        if address.is_unix:
            if tls is not None:
                msg = f"{address}: TLS applies to tls:// addresses, not UNIX sockets"
                raise ConfigurationError(msg)
            return
        if cookie is None:
            msg = (
                f"{address}: the agent listens on TCP only with a cookie; set "
                f"{_auth.COOKIE_ENV} or {_auth.COOKIE_FILE_ENV} (or pass cookie_file=)"
            )
            raise ConfigurationError(msg)
        if address.scheme == "tls" and tls is None:
            msg = (
                f"{address}: a tls:// agent needs a certificate and key "
                "(tls_cert=/tls_key=, or RPCCTL_TLS_CERT and RPCCTL_TLS_KEY)"
            )
            raise ConfigurationError(msg)
        if address.scheme == "tcp" and tls is not None:
            msg = f"{address}: a certificate was given for a tcp:// address; use tls://"
            raise ConfigurationError(msg)
        if not address.is_loopback and tls is None:
            self.log.warning(
                "agent.insecure_transport",
                node=str(address),
                reason="listening beyond loopback without TLS: calls and results cross the "
                "network in clear text (the cookie itself never does); use tls://",
            )

    def _bind(self) -> _Server:
        if self.address.is_unix:
            return self._bind_unix(self.address.path)
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
        self.state.node = str(Address(self.address.scheme, host=host, port=port))
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
        _capture.install()
        self._thread.start()
        self.log.info("agent.started", node=self.node, app=self.state.app, pid=os.getpid())

    def stop(self) -> None:
        """Close the server and every connection, and remove the socket file."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._server.close()
        self._thread.join(timeout=5)
        _capture.uninstall()
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

    def _abandon_in_child(self) -> None:
        """After a fork, in the child: the server's threads did not come along, and its
        sockets belong to the parent. Close the child's copies of the descriptors (never
        shutdown(), which would reach the parent's socket too) and forget the socket file,
        so the child neither serves nor deletes what its parent owns."""
        self._stopped.set()
        self._socket_inode = None
        for sock in [self._server.listener, *list(self._server.clients)]:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
    cookie: str | bytes | None = None,
    cookie_file: str | os.PathLike[str] | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    tls_client_ca: str | None = None,
    locks: str | None = None,
    ready: bool | None = None,
) -> Agent:
    """Start this process's agent and return it once it listens.

    *node* defaults to ``RPCCTL_NODE``; *tasks* names modules to import so their ``@task``
    functions register; *app* defaults to ``RPCCTL_APP`` or the program's name. On a UNIX
    socket only the agent's own euid and root may connect, unless *allowed_uids* says
    otherwise. *on_stop* is what ``rpcctl stop`` runs (on its own thread) when the app is
    not under ``rpcctl start``; by default the process sends itself SIGTERM.

    The cookie comes from *cookie*, *cookie_file*, ``RPCCTL_COOKIE`` or
    ``RPCCTL_COOKIE_FILE``; with one, every caller must prove it (TCP requires one). A
    ``tls://`` address needs *tls_cert* and *tls_key* (or ``RPCCTL_TLS_CERT`` and
    ``RPCCTL_TLS_KEY``); *tls_client_ca* (``RPCCTL_TLS_CLIENT_CA``) makes client
    certificates mandatory. *locks* (``RPCCTL_LOCKS``) chooses where ``@task(lock=...)``
    locks live: ``memory`` (default, this process), ``file:DIRECTORY`` (this host) or a
    ``postgresql://`` URL (every replica using that database). *ready* sets the app's
    readiness (see :func:`app_agent.set_ready`).

    Started inside a running asyncio event loop, the agent runs ``async def`` tasks on that
    loop, so they can use the app's async resources; sync tasks always run on threads.
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
        try:
            secret = _auth.resolve_cookie(cookie, cookie_file)
        except _auth.CookieError as exc:
            raise ConfigurationError(str(exc)) from None
        tls = _tls_context(address, tls_cert, tls_key, tls_client_ca)
        try:
            lock_backend = lock_backends(locks or os.environ.get("RPCCTL_LOCKS"))
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigurationError(f"locks: {exc}") from None
        import_task_modules(tasks)
        if ready is not None:
            readiness.set_ready(ready)
        agent = Agent(
            address,
            registry,
            app=app or _default_app_name(),
            allowed_uids=allowed_uids,
            on_stop=on_stop,
            cookie=secret,
            tls=tls,
            locks=lock_backend,
            loop=_running_loop(),
        )
        agent._start()
        _current = agent
        return agent


def _tls_context(
    address: Address, cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    cert = cert or os.environ.get("RPCCTL_TLS_CERT")
    key = key or os.environ.get("RPCCTL_TLS_KEY")
    client_ca = client_ca or os.environ.get("RPCCTL_TLS_CLIENT_CA")
    if address.scheme != "tls" and not (cert or key):
        return None
    if not cert:
        return None  # reported by Agent._check_transport with the whole picture
    try:
        return server_tls_context(cert, key, client_ca)
    except (OSError, ssl.SSLError) as exc:
        msg = f"{address}: cannot load the TLS certificate/key ({exc})"
        raise ConfigurationError(msg) from None


def _running_loop() -> Any:
    """The event loop running in this thread, if any (asyncio is not imported for this)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _after_fork_in_child() -> None:
    global _current, _lock
    _lock = threading.Lock()  # another thread may have held it at the moment of the fork
    agent, _current = _current, None
    if agent is not None:
        agent._abandon_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> Agent | None:
    """The running agent of this process, if any."""
    return _current


def _default_app_name() -> str:
    program = sys.argv[0] or "python"
    if os.path.basename(program) == "__main__.py":  # python -m pkg: the package's name
        program = os.path.dirname(program)
    return os.environ.get("RPCCTL_APP") or os.path.basename(program)
