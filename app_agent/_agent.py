"""The agent's lifecycle: the listening socket, the server thread, start/stop, the singleton."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Unpack

from app_agent import wire
from app_agent._jobs import capture as _capture
from app_agent._jobs import history as _history
from app_agent._jobs.locks import Backend
from app_agent._jobs.locks import backend as lock_backends
from app_agent._registry import Registry, import_task_modules
from app_agent._registry import registry as global_registry
from app_agent._server import listener
from app_agent._server import readiness as readiness
from app_agent._server import threads as _threads
from app_agent._server.access import Identity
from app_agent._server.gate import Gate
from app_agent._server.threads import NoThread
from app_agent._state import AgentState
from app_agent.config import (
    AgentConfig,
    StartOptions,
    app_modules,
    arguments_too_big,
    distribution_version,
    task_module,
)
from app_agent.config import load as load_config
from app_agent.exceptions import (
    AgentAlreadyRunning,
    AgentError,
    ConfigurationError,
    StartRefused,
)
from app_agent.logs import get_logger
from app_agent.wire import ErrorKind

# RPyC logs through stdlib logging; the agent logs its own events with structlog, so RPyC's
# chatter is kept to warnings and above.
_rpyc_logger = logging.getLogger("app_agent.rpyc")
_rpyc_logger.setLevel(logging.WARNING)

RESTARTS = 3
RESTART_WINDOW = 60.0
"""The agent's loop is run again at most RESTARTS times in RESTART_WINDOW seconds."""
_FRAME_SLACK = 64 * 1024
"""Bytes a request frame may carry besides its arguments (task name, options, RPyC's own)."""


class Agent:
    """A running agent: a gate on the agent's thread, one thread per served connection.

    The gate (:class:`app_agent._server.gate.Gate`) accepts, checks and answers pings itself; an
    admitted connection gets its own thread running RPyC's protocol over it (``connect_channel``
    and ``serve``), so a slow task blocks only its caller.
    """

    def __init__(
        self,
        config: AgentConfig,
        registry: Registry | None = None,
        locks: Backend | None = None,
        loop: Any = None,
    ) -> None:
        self.config = config
        self.address = config.address
        self.log = get_logger()
        self.state = AgentState(
            registry if registry is not None else global_registry,
            node=str(config.address),
            app=config.app,
            log=self.log,
            locks=locks if locks is not None else lock_backend(config),
            loop=loop,
            version=config.version,
        )
        self.state.stop_handler = config.on_stop
        self.state.config = config
        self.max_connections = config.max_connections
        self.idle_timeout = config.idle_timeout
        if config.insecure:
            self.log.warning(
                "agent.insecure_transport",
                node=str(config.address),
                reason="listening beyond loopback without TLS: calls and results cross the "
                "network readable (authenticated, never the cookie itself); use tls://",
            )
        self._served_lock = threading.Lock()
        self._served: set[Any] = set()
        self._socket_inode: tuple[int, int] | None = None
        self._stopped = threading.Event()
        self._stopping = threading.Lock()  # stop() is one transition: one caller wins
        # Before binding, so that a store that cannot be opened (PostgreSQL without its
        # driver) leaves no socket behind. Opening touches no database: an agent starts
        # while its store is down.
        history = _history.open_store(
            config.history,
            app=config.app,
            node=str(config.address),
            keep=config.history_keep,
            days=config.history_days,
            log=self.log,
        )
        sock, self.state.node, self._socket_inode = listener.bind(
            self.address, config.shared_socket, self.log
        )
        self.gate = Gate(
            sock,
            self.log,
            config.allowed_uids,
            config.cookie,
            config.tls,
            has_room=self._has_room,
            hand_over=self._hand_over,
            max_pending=config.max_handshakes,
            access=config.access,
            app=config.app,
            version=config.version,
        )
        if isinstance(history, _history.HistoryStore):
            history.node = self.state.node  # the real port, once port 0 is bound
        self.state.jobs.history = history
        self._thread = threading.Thread(target=self._run, name="rpcctl-agent", daemon=True)
        self.down: str | None = None
        """Why the agent's thread ended for good while nobody stopped the agent, if it did."""

    @property
    def node(self) -> str:
        """The address callers use, with the real port when the agent bound port 0."""
        return self.state.node

    # -- serving admitted connections ----------------------------------------------------------

    def _has_room(self) -> bool:
        with self._served_lock:
            return len(self._served) < self.max_connections

    def _hand_over(
        self, sock: Any, peer: str, auth: str, identity: Identity
    ) -> Callable[[bool], None]:
        """Ready a thread of its own for an admitted connection (called on the gate's
        thread, before it answers); NoThread when the app cannot start one. The thread
        waits for the gate's word: serve (True) or leave the socket alone (False)."""
        word = _Word()
        thread = threading.Thread(
            target=self._serve,
            args=(sock, peer, auth, identity, word),
            name="rpcctl-agent-conn",
            daemon=True,
        )
        with self._served_lock:
            self._served.add(sock)
        try:
            _threads.start(thread)
        except NoThread:
            with self._served_lock:
                self._served.discard(sock)
            raise
        return word.say

    def _serve(self, sock: Any, peer: str, auth: str, identity: Identity, word: _Word) -> None:
        if not word.wait():
            with self._served_lock:
                self._served.discard(sock)
            return  # the gate could not answer: the socket is its to close
        # RPyC loads with the first admitted connection: an agent that is only pinged
        # (probes: the gate answers them) never carries it.
        import rpyc
        from rpyc.core import consts

        from app_agent import streams
        from app_agent._caller import Caller, Hangup
        from app_agent._service import PROTOCOL_CONFIG, AgentService

        caller = Caller(self.state, caller=peer, auth=auth, identity=identity)
        caller.peer_gone = Hangup(sock.fileno())
        service = AgentService(caller)
        conn = None
        # A frame once begun must keep coming: no pause longer than this (nor than the idle
        # timeout), and the whole of it at a minimum rate (streams.BoundedChannel).
        stall = min(streams.FRAME_TIMEOUT, self.idle_timeout)
        # An identity that may run no task (a probe) sends no arguments: what it can make
        # the agent hold is a small request, not max_argument_bytes.
        limit = self.config.max_argument_bytes if identity.sends_arguments else 0
        channel = streams.BoundedChannel(
            streams.BufferedSocketStream(sock, stall), max_frame=limit + _FRAME_SLACK
        )
        try:
            conn = rpyc.connect_channel(
                channel, service=service, config=dict(PROTOCOL_CONFIG, logger=_rpyc_logger)
            )
            while not conn.closed:
                try:
                    if not conn.serve(self.idle_timeout):
                        self.log.info("connection.idle_closed", peer=peer, idle_s=self.idle_timeout)
                        break
                except streams.OversizedFrame as big:
                    if big.seq is None:
                        raise
                    # Drained, never held: answered as a refused call. RPyC has no public
                    # way to answer a request it never decoded.
                    reply = _oversized_reply(big, limit, identity)
                    conn._send(consts.MSG_REPLY, big.seq, (consts.LABEL_VALUE, reply))
                    self.log.info("call.refused", reason=str(big), **service.who)
                    continue
                service.run_after_reply()
        except streams.FrameTimeout as exc:
            if getattr(sock, "tampered", False):  # a record begun and never finished
                self.log.warning("connection.tampered", peer=peer, auth=auth, reason=str(exc))
            else:
                self.log.info("connection.stalled", peer=peer, auth=auth, reason=str(exc))
        except (EOFError, OSError) as exc:
            if getattr(sock, "tampered", False):
                self.log.warning(
                    "connection.tampered", peer=peer, auth=auth, reason=str(_cause(exc))
                )
            else:
                # A peer that vanished mid-conversation ends only its own connection.
                self.log.debug("connection.closed", peer=peer, error=repr(exc))
        # Whatever else a peer's frames make RPyC raise ends that connection only, logged at a
        # bounded rate: any authenticated peer can send them at will.
        except Exception as exc:  # noqa: BLE001
            self.state.malformed.note(f"{type(exc).__name__}: {str(exc)[:80]}", **service.who)
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

    # -- lifecycle -------------------------------------------------------------------------

    def _run(self) -> None:
        """The agent's thread: the gate's loop. The loop itself outlives any error; should
        something still end it (an exception injected into the thread, say), it is run
        again, up to RESTARTS times in RESTART_WINDOW seconds; past that the agent says it
        is down (``agent.down``) and stops, so nothing pretends it is alive."""
        restarts: list[float] = []
        while True:
            try:
                self.gate.serve_forever()
                return
            # The agent's thread must say why it ends, whatever ended it.
            except BaseException as exc:
                if self._stopped.is_set():
                    return
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW]
                if len(restarts) >= RESTARTS:
                    self._go_down(exc)
                    return
                restarts.append(now)
                self.log.error(
                    "gate.error",
                    error=f"{type(exc).__name__}: {exc}",
                    restart=len(restarts),
                    exc_info=exc,
                )

    def _go_down(self, exc: BaseException) -> None:
        self.down = f"the agent's thread failed {RESTARTS + 1} times: {type(exc).__name__}: {exc}"
        self.log.error("agent.down", node=self.node, reason=self.down, exc_info=exc)
        self.gate.shut()
        self.stop()

    @property
    def alive(self) -> bool:
        """Whether the agent serves: started, not stopped, and its thread running."""
        return self._thread.is_alive() and not self._stopped.is_set()

    def serve(self) -> None:
        """Start serving on the agent's thread (``app_agent.start`` does this; an Agent made
        directly, as the benchmark makes many in one process, must call it)."""
        _capture.install()
        self._thread.start()
        access = self.config.access
        self.log.info(
            "agent.started",
            node=self.node,
            app=self.state.app,
            pid=os.getpid(),
            version=self.config.version,
            **({"access": access.path, "identities": list(access.identities)} if access else {}),
        )
        if self.config.environment_node is not None:
            self.log.warning(
                "agent.node_differs",
                node=self.node,
                environment_node=str(self.config.environment_node),
                reason=f"start(node=...) overrides {wire.environment.NODE}, where `rpcctl "
                "start` and its clients look for this agent; under `rpcctl start`, call start() "
                "without node=",
            )
        for warning in self.config.warnings:
            self.log.warning("access.warning", problem=warning)
        if access is not None:
            # Tasks registered later (a module imported after start) are not seen here.
            names = [t.name for t in self.state.registry.all()]
            for identity, pattern in access.unmatched_patterns(names):
                self.log.warning(
                    "access.warning",
                    problem=f"{access.path}: [identity.{identity}] allow: {pattern!r} matches "
                    "no registered task",
                )

    def stop(self) -> None:
        """Close the server and every connection, and remove the socket file. Idempotent:
        of concurrent calls one stops the agent, the others return at once."""
        with self._stopping:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self.gate.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        with self._served_lock:
            served = list(self._served)
        for sock in served:  # wakes each connection's thread, which then cleans up
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        _capture.uninstall()
        self.state.flush_logs()
        # Bounded (history CLOSE_TIMEOUT): a store that is down never holds up the stop.
        self.state.jobs.history.close()
        if self.address.is_unix and self._socket_inode is not None:
            listener.remove_own_socket(self.address.path, self._socket_inode)
        _forget(self)
        self.log.info("agent.stopped", node=self.node)

    def _abandon_in_child(self) -> None:
        """After a fork, in the child: the server's threads did not come along, and its
        sockets belong to the parent. Close the child's copies of the descriptors (never
        shutdown(), which would reach the parent's socket too) and forget the socket file,
        so the child neither serves nor deletes what its parent owns."""
        self._stopping = threading.Lock()  # a parent's thread may have held it at the fork
        self._stopped.set()
        self._socket_inode = None
        self.gate.abandon()
        self.state.jobs.history.abandon_in_child()
        for sock in list(self._served):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- the process-wide singleton -----------------------------------------------------------

_lock = threading.RLock()  # re-entrant: stop() from a signal handler that interrupted start()
_current: Agent | None = None
refusal: str | None = None
"""Why this process must never start an agent, when it must not: ``python -m
app_agent.eval`` sets it, so a task module that starts the app on import is named."""
_starting: str | None = None
"""While a start() runs: the task module it imports, "" outside its imports. start() does
not hold _lock while it imports, so a task module that calls start() is refused at once."""


def _forget(agent: Agent) -> None:
    global _current
    with _lock:
        if _current is agent:
            _current = None


def start(
    node: str | None = None, tasks: Iterable[str] = (), **options: Unpack[StartOptions]
) -> Agent:
    """Start this process's agent and return it once it listens.

    *node* defaults to ``RPCCTL_NODE``; *tasks* names modules to import so their ``@task``
    functions register; the options are those of :class:`app_agent.config.StartOptions`.

    Started inside a running asyncio event loop, the agent runs ``async def`` tasks on that
    loop, so they can use the app's async resources; sync tasks always run on threads.
    """
    global _current, _starting
    with _lock:
        if refusal is not None:
            raise StartRefused(refusal)
        if _current is not None:
            msg = f"an agent is already running in this process on {_current.node}"
            raise AgentAlreadyRunning(msg)
        if _starting:
            msg = (
                f"app_agent.start() was called by module {_calling_module(sys._getframe(1))} "
                f"while the agent imported its task modules ({_starting}): start the agent "
                "from the app's entry point (its __main__, a server hook), not from a task "
                "module"
            )
            raise AgentError(msg)
        if _starting is not None:
            msg = "another thread is starting this process's agent"
            raise AgentAlreadyRunning(msg)
        _starting = ""
    try:
        config = load_config(node, **options)
        locks = lock_backend(config)
        tasks = tuple(tasks)
        for module in tasks:
            _starting = module
            import_task_modules((module,))
        _starting = ""
        if config.version is None:
            # The app's own code: the modules named by tasks=, then those of its tasks.
            found = (*tasks, *(task_module(t.func) for t in global_registry.all()))
            config = dataclasses.replace(config, version=distribution_version(app_modules(found)))
        if config.ready is not None:
            readiness.set_ready(config.ready)
        agent = Agent(config, locks=locks, loop=_running_loop())
        agent.serve()
        with _lock:
            _current = agent
        return agent
    finally:
        _starting = None


def _calling_module(frame: Any) -> str:
    """The module of the innermost frame from *frame* outward that is not the agent's."""
    while frame is not None:
        name = str(frame.f_globals.get("__name__", "?"))
        if name != "app_agent" and not name.startswith("app_agent."):
            return name
        frame = frame.f_back
    return "?"


def lock_backend(config: AgentConfig) -> Backend:
    """Where the agent's task locks live, as configured; ConfigurationError when unusable."""
    try:
        return lock_backends(config.locks)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ConfigurationError(f"locks: {exc}") from None


def _oversized_reply(big: Any, limit: int, identity: Identity) -> str:
    """The answer to a request larger than the agent takes from *identity*: exit 2, or 5
    for an identity that may run nothing (it has no arguments to send)."""
    if not limit:
        message = f"{identity} may run no task, so it sends no arguments ({big}, refused unread)"
        return wire.error(ErrorKind.AUTH, message, wire.Reason.TASK_NOT_ALLOWED)
    return wire.error(
        ErrorKind.USAGE,
        arguments_too_big(big.size, limit),
        wire.Reason.ARGUMENTS_TOO_BIG,
        size=big.size,
        limit=limit,
    )


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
    global _current, _lock, _starting
    _lock = threading.RLock()  # another thread may have held it at the moment of the fork
    _starting = None  # a start() under way in another thread did not come along
    agent, _current = _current, None
    if agent is not None:
        agent._abandon_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def current() -> Agent | None:
    """The running agent of this process, if any: never one whose thread has ended."""
    agent = _current
    return agent if agent is not None and agent.alive else None


class _Word:
    """The gate's one word to a connection's thread: serve, or not."""

    __slots__ = ("_event", "_serve")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._serve = False

    def say(self, serve: bool) -> None:
        self._serve = serve
        self._event.set()

    def wait(self) -> bool:
        self._event.wait()
        return self._serve
