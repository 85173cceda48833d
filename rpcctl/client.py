"""The Python client: connect to an agent, ping it, list and call its tasks."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from app_agent import wire
from app_agent.wire import Address, ErrorKind
from rpcctl import _transport
from rpcctl._client_more import MoreCalls
from rpcctl._transport import Security
from rpcctl.exceptions import (
    BY_KIND,
    AuthenticationFailed,
    CallTimeout,
    ConfigError,
    TaskFailed,
    Unreachable,
    UsageError,
)

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

DEFAULT_TIMEOUT = 5.0
"""Seconds for connecting, the handshake and the short requests (ping, tasks, info)."""

_CLIENT_CONFIG: dict[str, Any] = {
    # The agent reaches nothing in the client either.
    "allow_safe_attrs": False,
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "include_local_traceback": False,
    "sync_request_timeout": None,
}


def resolve_address(node: str | Address | None) -> Address:
    """An Address from *node*, else from ``RPCCTL_NODE``; ConfigError when neither is usable."""
    if isinstance(node, Address):
        return node
    text = node if node is not None else os.environ.get(wire.NODE_ENV)
    if not text:
        msg = f"no node given: pass --node (or node=) or set {wire.NODE_ENV}"
        raise ConfigError(msg)
    from rpcctl._settings import parse_node

    return parse_node(text)


class Client(MoreCalls):
    """A kept connection to one agent. Use :func:`connect` to make one."""

    def __init__(
        self,
        address: Address,
        timeout: float = DEFAULT_TIMEOUT,
        security: Security | None = None,
    ) -> None:
        import rpyc

        from app_agent.streams import BoundedChannel, BufferedSocketStream
        from app_agent.wire.records import RecordSocket

        self.address = address
        self.timeout = timeout
        security = security if security is not None else Security.resolve()
        sock = _transport.open_socket(address, timeout, security)
        self._sock: Any = sock
        self._abandoned = False
        try:
            answer, keys = _transport.handshake(sock, address, "rpc", security)
            self.handshake: dict[str, Any] = answer
            """The agent's answer to our hello: pid, ready, app, version (and identity, with
            an access file); covered by the agent's proof when a cookie was proven."""
            if keys is not None:
                to_agent, to_client = keys
                self._sock = RecordSocket(sock, send_key=to_agent, recv_key=to_client)
            # The connection's own requests (the root, a method's netref, the polite close)
            # wait at most *timeout*; calls carry their own expiry. An answer, once begun,
            # must keep arriving (no pause of *timeout*), and within the call's own deadline.
            config = dict(_CLIENT_CONFIG, sync_request_timeout=timeout)
            self._channel = BoundedChannel(BufferedSocketStream(self._sock, stall=timeout))
            self._conn = rpyc.connect_channel(self._channel, config=config)
        except BaseException:
            sock.close()
            raise
        self._async = rpyc.async_
        # Each exposed method is fetched once and kept (a netref): one round trip per call.
        self._methods: dict[str, Any] = {}
        self._started: dict[str, dict[str, Any]] = {}  # first answers of followed jobs
        self._root = self._guarded("root", lambda: self._conn.root)

    def close(self) -> None:
        import contextlib

        if self._abandoned:
            # A request is still outstanding (it timed out): RPyC's polite close would wait
            # for the busy connection to answer, so drop the connection instead.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, EOFError):
            self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests ----------------------------------------------------------------------------

    def ping(self) -> str:
        """``"pong"``, over this connection and through the agent's service."""
        result = self._request("ping", self.timeout)
        return str(result)

    def tasks(self) -> list[dict[str, Any]]:
        """The registered tasks: name, alias, signature, doc, async."""
        result: list[dict[str, Any]] = self._reply(self._request("tasks", self.timeout))
        return result

    def info(self) -> dict[str, Any]:
        """pid, uptime, versions, app name, node and running jobs."""
        result: dict[str, Any] = self._reply(self._request("info", self.timeout))
        return result

    def stop(self, restart: bool = False) -> dict[str, Any]:
        """Ask the app to stop (or, under ``rpcctl start``, restart) gracefully.

        Returns ``{"pid", "via"}``; the app may be gone before it can answer, in which case
        ``{"pid": None, "via": "gone"}`` comes back.
        """
        try:
            result: dict[str, Any] = self._reply(self._request("stop", self.timeout, restart))
        except Unreachable:
            return {"pid": None, "via": "gone"}
        return result

    def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run task *name* with JSON-compatible arguments and return its result."""
        return self.invoke(name, args, kwargs)

    def invoke(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        lock_wait: float = 0.0,
    ) -> Any:
        """Like :meth:`call`, with an optional *timeout* in seconds (CallTimeout when it passes)
        and *lock_wait*, the seconds to wait for a busy task lock (Busy at once by default).

        The task itself goes on running in the agent when the timeout passes.
        """
        args_json, kwargs_json = _encode_arguments(args, kwargs or {})
        request: tuple[str, ...] = (name, args_json, kwargs_json)
        if lock_wait:
            request += (wire.dumps({"lock_wait": lock_wait}),)
        try:
            text = self._request("call", timeout, *request)
        except CallTimeout:
            msg = (
                f"{name} did not finish within {timeout:g}s; "
                "it goes on running in the agent (`rpcctl jobs` lists it)"
            )
            raise CallTimeout(msg) from None
        return self._reply(text)

    # -- plumbing ----------------------------------------------------------------------------

    def _request(self, method: str, timeout: float | None, *args: str | bool | float) -> Any:
        """Call the agent's exposed *method* with plain arguments, within *timeout* seconds."""

        def call() -> Any:
            bound = self._methods.get(method)
            if bound is None:
                bound = self._methods[method] = self._async(getattr(self._root, method))
            result = bound(*args)
            if timeout is not None:
                result.set_expiry(timeout)
                # Reading the answer, too, ends by then (a record that never ends included).
                self._channel.deadline = time.monotonic() + timeout
            try:
                return result.value
            finally:
                self._channel.deadline = None

        return self._guarded(method, call, timeout)

    def _guarded(
        self, method: str, request: Callable[[], Any], timeout: float | None = None
    ) -> Any:
        """Run *request*, turning RPyC's and the socket's failures into rpcctl's errors."""
        from rpyc.core.async_ import AsyncResultTimeout

        from app_agent.streams import FrameTimeout

        timeout = self.timeout if timeout is None and method == "root" else timeout
        # Until the answer arrives the connection is owed a reply: if we leave early (a
        # timeout, Ctrl-C), close() must not wait politely for a busy agent.
        self._abandoned = True
        try:
            value = request()
            self._abandoned = False
            return value
        except AsyncResultTimeout:
            waited = timeout if timeout is not None else self.timeout
            msg = f"{self.address}: no answer to {method} within {waited:g}s"
            pid = self.handshake.get("pid") if self.address.is_loopback else None
            if isinstance(pid, int):
                from rpcctl._diagnose import why_stalled

                stalled = why_stalled(pid)
                msg += f": {stalled}" if stalled else ""
            raise CallTimeout(msg) from None
        except FrameTimeout as exc:
            msg = (
                f"{self.address}: the agent's answer to {method} did not arrive whole ({exc}), "
                "so the connection was dropped"
            )
            raise CallTimeout(msg) from None
        except (EOFError, OSError) as exc:
            if getattr(self._sock, "tampered", False):
                what = (
                    "the agent found our request altered on the way"
                    if self._sock.peer_alerted
                    else "the agent's reply failed its integrity check"
                )
                msg = (
                    f"{self.address}: {what}: someone between us tampered with the "
                    "connection, so it was dropped (use tls:// across networks)"
                )
                raise AuthenticationFailed(msg) from None
            msg = f"{self.address}: the connection was lost ({exc or type(exc).__name__})"
            raise Unreachable(msg) from None

    def _reply(self, text: Any) -> Any:
        if type(text) is not str:
            msg = f"{self.address}: unexpected reply from the agent"
            raise UsageError(msg)
        envelope = wire.loads(text)
        if envelope.get("ok"):
            return envelope.get("result")
        raise_error(envelope.get("error") or {})

    # -- jobs --------------------------------------------------------------------------------

    def run(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        lock_wait: float = 0.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        """Run task *name* as a job and follow it: *on_event* gets each output line and
        progress event live; the result is returned (or the failure raised).

        When *timeout* passes first, CallTimeout names the job, which goes on running.
        """
        wait = 1.0 if timeout is None else min(1.0, timeout)
        snapshot = self._start(name, args, kwargs, lock_wait, detach=False, wait=wait)
        return self.follow(snapshot["job"], timeout=timeout, on_event=on_event, first=snapshot)

    def start(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        lock_wait: float = 0.0,
        follow: bool = False,
    ) -> str:
        """Start task *name* as a job and return its id at once: detached, or, with *follow*,
        with this connection attached as its follower from the first line (then
        :meth:`follow` it: nothing is dropped while this client keeps up, and a result too
        big for the history still reaches it)."""
        snapshot = self._start(name, args, kwargs, lock_wait, detach=not follow, wait=0.0)
        if follow:
            # The first answer may already hold the job's end (and a result too big for the
            # history, sent only to followers): follow() starts from it.
            self._started[str(snapshot["job"])] = snapshot
        return str(snapshot["job"])

    def _start(
        self,
        name: str,
        args: tuple[Any, ...] | list[Any],
        kwargs: dict[str, Any] | None,
        lock_wait: float,
        detach: bool,
        wait: float,
    ) -> dict[str, Any]:
        args_json, kwargs_json = _encode_arguments(args, kwargs or {})
        options = wire.dumps({"lock_wait": lock_wait, "detach": detach, "wait": wait})
        limit = self.timeout + wait + lock_wait
        snapshot: dict[str, Any] = self._reply(
            self._request("run", limit, name, args_json, kwargs_json, options)
        )
        return snapshot

    def follow(
        self,
        job_id: str,
        *,
        since: int = 0,
        timeout: float | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        first: dict[str, Any] | None = None,
    ) -> Any:
        """Follow job *job_id* from event *since* until it ends; its result, or its failure
        raised. CallTimeout (naming the job) when *timeout* passes first.

        *on_event* gets each output line and progress event live, and two notes of the
        client's own: ``{"type": "dropped", "from_seq": N, "count": M}`` where the agent
        dropped M events (seq N to N+M-1) before this client read them, and
        ``{"type": "result_dropped", "message": ...}`` when the job's result was too big to
        be kept until this client asked for it. Without *on_event* only the job's state is
        polled, not its output.
        """
        if on_event is None:
            since = SUMMARY_ONLY
        deadline = None if timeout is None else time.monotonic() + timeout
        snapshot = first if first is not None else self._started.pop(job_id, None)
        while True:
            if snapshot is None:
                wait = 1.0 if deadline is None else max(min(1.0, deadline - time.monotonic()), 0)
                snapshot = self.events(job_id, since, wait)
            if on_event is not None:
                if snapshot.get("dropped"):
                    on_event(dropped_event(since, snapshot["dropped"]))
                for event in snapshot["events"]:
                    on_event(event)
                since = snapshot["cursor"]
            if snapshot["state"] != "running":
                if on_event is not None and snapshot.get("result_dropped"):
                    on_event({"type": "result_dropped", "message": snapshot["result_dropped"]})
                return job_outcome(snapshot)
            if deadline is not None and time.monotonic() >= deadline:
                msg = (
                    f"{snapshot['task']} did not finish within {timeout:g}s; it goes on running "
                    f"as job {job_id}: follow it with `rpcctl logs {job_id} --follow`, "
                    f"or wait for it with `rpcctl wait {job_id}`"
                )
                raise CallTimeout(msg, job=job_id)
            snapshot = None

    def job(self, job_id: str) -> dict[str, Any]:
        """One job's summary: id, task, caller, state, started_at, duration_s, result or
        ``result_dropped`` (why the agent no longer keeps it), error."""
        snapshot = self.events(job_id, SUMMARY_ONLY, 0.0)
        return {
            k: v for k, v in snapshot.items() if k not in ("events", "cursor", "dropped", "job")
        }

    def jobs(self) -> list[dict[str, Any]]:
        """Recent and running jobs, newest first: summaries without results or tracebacks
        (:meth:`job` has those)."""
        result: list[dict[str, Any]] = self._reply(self._request("jobs", self.timeout))
        return result

    def history(
        self,
        since: float | None = None,
        task: str | None = None,
        identity: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Finished jobs from the agent's durable history, newest first: started at or after
        *since* (seconds since the epoch), of tasks matching the glob *task*, called by
        *identity*, at most *limit*. Each: job, task, caller, identity, node, started,
        duration, state, exit_code, error (its first line), argument_sizes, arguments."""
        since = float(since) if since is not None else None
        result: list[dict[str, Any]] = self._reply(
            self._newer_request("history", self.timeout, since, task, identity, limit)
        )
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask job *job_id* to stop; ``{"job", "requested", "state"}``."""
        result: dict[str, Any] = self._reply(self._request("cancel", self.timeout, job_id))
        return result

    def events(self, job_id: str, since: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """Job *job_id*'s events from *since* on (waiting up to *wait* s for new ones), with
        its summary."""
        snapshot: dict[str, Any] = self._reply(
            self._request("events", self.timeout + wait, job_id, since, wait)
        )
        return snapshot


SUMMARY_ONLY = 1 << 62
"""An events() cursor past any event: the job's state and outcome without its output."""


def dropped_event(since: int, count: int) -> dict[str, Any]:
    """The note :meth:`Client.follow` passes on where *count* events from *since* on were
    dropped by the agent before this client could read them."""
    return {"type": "dropped", "from_seq": since, "count": count}


def raise_error(error: dict[str, Any]) -> NoReturn:
    """Raise the exception of an error envelope's ``error`` part."""
    try:
        kind = ErrorKind(str(error.get("kind")))
    except ValueError:
        kind = ErrorKind.TASK_FAILED
    message = str(error.get("message", "the agent reported an error"))
    if kind is ErrorKind.TASK_FAILED:
        raise TaskFailed(
            message,
            remote_traceback=str(error.get("traceback", "")),
            type=str(error.get("type", "")),
        )
    raise BY_KIND[kind](message)


def job_outcome(snapshot: dict[str, Any]) -> Any:
    """The result of a finished job's summary, or its failure raised."""
    state = snapshot["state"]
    if state == "succeeded":
        return snapshot.get("result")
    error = dict(snapshot.get("error") or {})
    if state == "cancelled":
        # Asked for: the CancelledError's traceback would only be noise.
        message = f"{snapshot['task']} was cancelled (job {snapshot['id']})"
        raise TaskFailed(message, type="CancelledError")
    elif error.get("kind") == "task_failed":
        error["message"] = f"{snapshot['task']} raised {error.get('type')}: {error.get('message')}"
    raise_error(error)


def _encode_arguments(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> tuple[str, str]:
    if not args and not kwargs:
        return "[]", "{}"
    try:
        if not wire.is_plain(list(args)) or not wire.is_plain(kwargs):
            msg = (
                "task arguments must be JSON data (str, int, finite float, bool, None, list, dict)"
            )
            raise UsageError(msg)
        return wire.dumps(list(args)), wire.dumps(kwargs)
    except RecursionError:
        msg = "task arguments are nested too deeply to be sent (the agent takes 200 levels)"
        raise UsageError(msg) from None


def connect(
    node: str | Address | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    cookie: str | bytes | None = None,
    cookie_file: str | os.PathLike[str] | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    identity: str | None = None,
    security: Security | None = None,
) -> Client:
    """Connect to the agent at *node* (default ``RPCCTL_NODE``); use as a context manager.

    The cookie comes from *cookie*, *cookie_file*, ``RPCCTL_COOKIE`` or
    ``RPCCTL_COOKIE_FILE``; for tls:// nodes, *tls_ca* is the CA that signed the agent's
    certificate and *tls_cert*/*tls_key* the client's own (``RPCCTL_TLS_*`` by default).
    *identity* (default ``RPCCTL_IDENTITY``) names who we are to an agent with an access
    file; the cookie is that identity's.
    """
    if security is None:
        security = Security.resolve(cookie, cookie_file, tls_ca, tls_cert, tls_key, identity)
    return Client(resolve_address(node), timeout=timeout, security=security)
