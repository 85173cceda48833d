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

import rpyc

from app_agent import _capture, wire
from app_agent import _readiness as readiness
from app_agent._gate import Gate, server_tls_context
from app_agent._locks import Backend, MemoryLocks
from app_agent._locks import backend as lock_backends
from app_agent._registry import Registry, import_task_modules
from app_agent._registry import registry as global_registry
from app_agent._service import PROTOCOL_CONFIG, AgentService, AgentState
from app_agent.exceptions import AddressInUse, AgentAlreadyRunning, ConfigurationError
from app_agent.logs import get_logger
from app_agent.streams import BufferedSocketStream
from app_agent.wire import Address, cookies
from app_agent.wire import environment as env

# RPyC logs through stdlib logging; the agent logs its own events with structlog, so RPyC's
# chatter is kept to warnings and above.
_rpyc_logger = logging.getLogger("app_agent.rpyc")
_rpyc_logger.setLevel(logging.WARNING)

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, NUL included
DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds an authenticated connection may sit idle before the agent closes it."""


class Agent:
    """A running agent: a gate on the agent's thread, one thread per served connection.

    The gate (:class:`app_agent._gate.Gate`) accepts, checks and answers pings itself; an
    admitted connection gets its own thread running RPyC's protocol over it (``connect_stream``
    and ``serve``), so a slow task blocks only its caller.
    """

    def __init__(
        self,
        address: Address,
        registry: Registry | None = None,
        app: str = "app",
        allowed_uids: Iterable[int] | None = None,
        on_stop: Callable[[], None] | None = None,
        cookie: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 256,
        max_handshakes: int = 512,
        locks: Backend | None = None,
        loop: Any = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.address = address
        self.log = get_logger()
        self.state = AgentState(
            registry if registry is not None else global_registry,
            node=str(address),
            app=app,
            log=self.log,
            locks=locks or MemoryLocks(),
            loop=loop,
        )
        self.state.stop_handler = on_stop
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        uids = frozenset(allowed_uids) if allowed_uids is not None else frozenset({os.geteuid(), 0})
        self._check_transport(address, cookie, tls)
        self._served_lock = threading.Lock()
        self._served: set[Any] = set()
        self._socket_inode: tuple[int, int] | None = None
        self._stopped = threading.Event()
        self.gate = Gate(
            self._bind(),
            self.log,
            uids,
            cookie,
            tls,
            has_room=self._has_room,
            hand_over=self._hand_over,
            max_pending=max_handshakes,
        )
        self._thread = threading.Thread(
            target=self.gate.serve_forever, name="rpcctl-agent", daemon=True
        )

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
                f"{env.COOKIE} or {env.COOKIE_FILE} (or pass cookie_file=)"
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

    def _bind(self) -> socket.socket:
        if self.address.is_unix:
            return self._bind_unix(self.address.path)
        host, port = self.address.host, self.address.port
        try:
            family, _type, _proto, _name, target = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
        except socket.gaierror as exc:
            msg = f"{self.address}: cannot resolve {host!r} ({exc.strerror})"
            raise ConfigurationError(msg) from None
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(target)
            listener.listen(socket.SOMAXCONN)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                msg = f"{self.address}: the address is already in use"
                raise AddressInUse(msg) from None
            raise
        host, port = listener.getsockname()[:2]
        self.state.node = str(Address(self.address.scheme, host=host, port=port))
        return listener

    def _bind_unix(self, path: str) -> socket.socket:
        if len(os.fsencode(path)) > _UNIX_PATH_MAX:
            msg = f"unix:{path}: the socket path is longer than {_UNIX_PATH_MAX} bytes"
            raise ConfigurationError(msg)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            # Owner-only: nobody else may even reach the socket file.
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._clear_stale_socket(path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            os.chmod(path, 0o600)
            listener.listen(socket.SOMAXCONN)
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                msg = f"unix:{path}: another agent is already listening on this socket"
                raise AddressInUse(msg) from None
            raise
        st = os.stat(path)
        self._socket_inode = (st.st_dev, st.st_ino)
        return listener

    # -- serving admitted connections ----------------------------------------------------------

    def _has_room(self) -> bool:
        with self._served_lock:
            return len(self._served) < self.max_connections

    def _hand_over(self, sock: Any, peer: str, auth: str) -> None:
        """Serve an admitted connection on a thread of its own (called on the gate's thread)."""
        with self._served_lock:
            self._served.add(sock)
        threading.Thread(
            target=self._serve, args=(sock, peer, auth), name="rpcctl-agent-conn", daemon=True
        ).start()

    def _serve(self, sock: Any, peer: str, auth: str) -> None:
        service = AgentService(self.state, caller=peer, auth=auth)
        conn = None
        try:
            conn = rpyc.connect_stream(
                BufferedSocketStream(sock),
                service=service,
                config=dict(PROTOCOL_CONFIG, logger=_rpyc_logger),
            )
            while not conn.closed:
                if not conn.serve(self.idle_timeout):
                    self.log.info("connection.idle_closed", peer=peer, idle_s=self.idle_timeout)
                    break
                service.run_after_reply()
        except (EOFError, OSError) as exc:
            if getattr(sock, "tampered", False):
                self.log.warning(
                    "connection.tampered", peer=peer, auth=auth, reason=str(_cause(exc))
                )
            else:
                # A peer that vanished mid-conversation ends only its own connection.
                self.log.debug("connection.closed", peer=peer, error=repr(exc))
        finally:
            service.run_after_reply()
            with self._served_lock:
                self._served.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            if conn is not None:
                with contextlib.suppress(EOFError, OSError):
                    conn.close()
            sock.close()

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

    def serve(self) -> None:
        """Start serving on the agent's thread (``app_agent.start`` does this; an Agent made
        directly, as the benchmark makes many in one process, must call it)."""
        _capture.install()
        self._thread.start()
        self.log.info("agent.started", node=self.node, app=self.state.app, pid=os.getpid())

    def stop(self) -> None:
        """Close the server and every connection, and remove the socket file."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.gate.close()
        self._thread.join(timeout=5)
        with self._served_lock:
            served = list(self._served)
        for sock in served:  # wakes each connection's thread, which then cleans up
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
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
        self.gate.abandon()
        for sock in list(self._served):
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
    idle_timeout: float | None = None,
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
    readiness (see :func:`app_agent.set_ready`). *idle_timeout* (``RPCCTL_IDLE_TIMEOUT``,
    default 300) is how many seconds an authenticated connection may stay silent before the
    agent closes it.

    Started inside a running asyncio event loop, the agent runs ``async def`` tasks on that
    loop, so they can use the app's async resources; sync tasks always run on threads.
    """
    global _current
    with _lock:
        if _current is not None:
            msg = f"an agent is already running in this process on {_current.node}"
            raise AgentAlreadyRunning(msg)
        text = node if node is not None else os.environ.get(env.NODE)
        if not text:
            msg = f"no node address: pass node= or set {env.NODE} (e.g. unix:run/app.sock)"
            raise ConfigurationError(msg)
        try:
            address = wire.parse_node(text)
        except wire.AddressError as exc:
            raise ConfigurationError(str(exc)) from None
        try:
            secret = cookies.resolve_cookie(cookie, cookie_file)
        except cookies.CookieError as exc:
            raise ConfigurationError(str(exc)) from None
        tls = _tls_context(address, tls_cert, tls_key, tls_client_ca)
        try:
            lock_backend = lock_backends(locks or os.environ.get(env.LOCKS))
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigurationError(f"locks: {exc}") from None
        idle = _idle_timeout(idle_timeout)
        import_task_modules(tasks)
        if ready is not None:
            readiness.set_ready(ready)
        agent = Agent(
            address,
            global_registry,
            app=app or _default_app_name(),
            allowed_uids=allowed_uids,
            on_stop=on_stop,
            cookie=secret,
            tls=tls,
            locks=lock_backend,
            loop=_running_loop(),
            idle_timeout=idle,
        )
        agent.serve()
        _current = agent
        return agent


def _tls_context(
    address: Address, cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    cert = cert or os.environ.get(env.TLS_CERT)
    key = key or os.environ.get(env.TLS_KEY)
    client_ca = client_ca or os.environ.get(env.TLS_CLIENT_CA)
    if address.scheme != "tls" and not (cert or key):
        return None
    if not cert:
        return None  # reported by Agent._check_transport with the whole picture
    try:
        return server_tls_context(cert, key, client_ca)
    except (OSError, ssl.SSLError) as exc:
        msg = f"{address}: cannot load the TLS certificate/key ({exc})"
        raise ConfigurationError(msg) from None


def _idle_timeout(given: float | None) -> float:
    text = os.environ.get(env.IDLE_TIMEOUT)
    if given is None and text:
        try:
            given = float(text)
        except ValueError:
            msg = f"{env.IDLE_TIMEOUT}={text!r}: expected a number of seconds"
            raise ConfigurationError(msg) from None
    value = DEFAULT_IDLE_TIMEOUT if given is None else given
    if not value > 0:
        msg = f"idle_timeout must be a positive number of seconds, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _cause(exc: BaseException) -> BaseException:
    """The error under RPyC's EOFError (it wraps the socket's own error as its argument)."""
    inner = exc.args[0] if exc.args else None
    return inner if isinstance(inner, BaseException) else exc


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
    return os.environ.get(env.APP) or os.path.basename(program)
