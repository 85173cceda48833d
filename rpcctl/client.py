"""The Python client: connect to an agent, ping it, list and call its tasks."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from app_agent import wire
from app_agent.wire import Address, Reason
from rpcctl._transport import Security
from rpcctl.exceptions import (
    CallTimeout,
    ConfigError,
    TaskFailed,
    Unhealthy,
    Unreachable,
    UsageError,
    raise_error,
)

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from app_agent.wire.protocol import Arg, Method

__all__ = ["Client", "connect", "raise_error"]

DEFAULT_TIMEOUT = 5.0
"""Seconds for connecting, the handshake and the short requests (ping, tasks, info)."""

SUMMARY_ONLY = 1 << 62  # wire.protocol.SUMMARY_ONLY, which the ping path must not import
"""An events() cursor past any event: the job's state and outcome without its output."""
MAX_NESTING = 200  # wire.protocol.MAX_NESTING (tests/test_protocol.py checks both agree)


_TABLE: dict[str, Method] = {}


def _methods() -> dict[str, Method]:
    """The protocol's table, imported on the first request (``rpcctl ping`` never makes
    one: its import costs the ping path ~10 ms of dataclasses and typing)."""
    if not _TABLE:
        from app_agent.wire.protocol import METHODS

        _TABLE.update(METHODS)
    return _TABLE


def resolve_address(node: str | Address | None) -> Address:
    """An Address from *node*, else from ``RPCCTL_NODE``; ConfigError when neither is usable."""
    if isinstance(node, Address):
        return node
    text = node if node is not None else os.environ.get(wire.NODE_ENV)
    if not text:
        msg = f"no node given: pass --node (or node=) or set {wire.NODE_ENV}"
        raise ConfigError(msg)
    from rpcctl._nodes import parse_node

    return parse_node(text)


class Client:
    """A kept connection to one agent. Use :func:`connect` to make one.

    Every request goes through :meth:`_send`, by the method's name in
    :data:`app_agent.wire.protocol.METHODS` and its arguments by the table's names: checked
    here (a UsageError before anything is sent) and given the deadline the table budgets.
    """

    def __init__(
        self,
        address: Address,
        timeout: float = DEFAULT_TIMEOUT,
        security: Security | None = None,
        traceparent: str | None = None,
    ) -> None:
        from rpcctl._connection import Connection

        self.address = address
        self.timeout = timeout
        self.traceparent = _traceparent(traceparent)
        """The caller's W3C trace context, sent with every call and run: the job's span in the
        app continues that trace (None: no trace; the CLI's comes from ``TRACEPARENT``)."""
        security = security if security is not None else Security.resolve()
        self._connection = Connection(address, timeout, security)
        self.handshake: dict[str, Any] = self._connection.handshake
        """The agent's answer to our hello: pid, ready, app, version (and identity, with
        an access file); covered by the agent's proof when a cookie was proven."""
        self._started: dict[str, dict[str, Any]] = {}  # first answers of followed jobs

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, name: str, arguments: dict[str, Any] | None = None, timeout: Any = ...) -> Any:
        """Request method *name* of the protocol's table with *arguments* (by the table's
        names, defaults filled in, types checked locally: UsageError when they do not fit)
        within *timeout* seconds: by default this client's timeout plus the seconds of the
        argument the table says the method may wait (``waits``); None for no limit. The
        raw reply."""
        method = _methods()[name]
        try:
            bound = method.bind((), arguments or {})
        except ValueError as exc:
            msg = f"{self.address}: {exc}"
            raise UsageError(msg, reason=Reason.BAD_ARGUMENTS, data={"method": name}) from None
        if timeout is ...:
            timeout = self.timeout + (float(bound[method.waits]) if method.waits else 0.0)
        values = list(bound.values())
        # Trailing defaults stay home: the agent fills them in (fewer bytes on every call).
        while values and _is_default(method.args[len(values) - 1], values[-1]):
            values.pop()
        return self._connection.request(name, timeout, *values)

    def _result(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """:meth:`_send`'s reply's result, or its error raised."""
        return self._connection.reply(self._send(name, arguments))

    # -- core --------------------------------------------------------------------------------

    def ping(self) -> str:
        """``"pong"``, over this connection and through the agent's service."""
        return str(self._send("ping"))

    def tasks(self) -> list[dict[str, Any]]:
        """The registered tasks: name, alias, signature, doc, async."""
        result: list[dict[str, Any]] = self._result("tasks")
        return result

    def info(self) -> dict[str, Any]:
        """pid, uptime, versions, app name, node and running jobs."""
        result: dict[str, Any] = self._result("info")
        return result

    def stop(self, restart: bool = False) -> dict[str, Any]:
        """Ask the app to stop (or, under ``rpcctl start``, restart) gracefully.

        Returns ``{"pid", "via"}``; the app may be gone before it can answer, in which case
        ``{"pid": None, "via": "gone"}`` comes back.
        """
        try:
            result: dict[str, Any] = self._result("stop", {"restart": restart})
        except Unreachable:
            return {"pid": None, "via": "gone"}
        return result

    def drain(self, wait_jobs: float = 0.0) -> dict[str, Any]:
        """Mark the app not ready (``ping --ready`` fails), run its on_drain hooks, then wait
        up to *wait_jobs* seconds for its running jobs to end. Idempotent; the report:
        ``{drained: {by, since}, already, hooks: [{name, ok, duration_s, error?}], failed:
        [hook names], running: [{id, task}] (still running), waited_s}``. A failed hook or a
        job still running is in the report, not raised: the app is drained either way."""
        result: dict[str, Any] = self._result("drain", {"wait_jobs": float(wait_jobs)})
        return result

    def resume(self) -> dict[str, Any]:
        """Run the app's on_resume hooks and, when all pass, mark it ready again:
        ``{resumed, was: {by, since} or None (not drained), hooks, failed}``. With a failed
        hook the app stays drained (``resumed`` False) and ``resume`` may be tried again."""
        result: dict[str, Any] = self._result("resume")
        return result

    # -- tasks -------------------------------------------------------------------------------

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
        args_json, kwargs_json = encode_arguments(args, kwargs or {})
        options = self._options(lock_wait=lock_wait) if lock_wait or self.traceparent else "{}"
        request = {
            "name": name,
            "args_json": args_json,
            "kwargs_json": kwargs_json,
            "options_json": options,
        }
        try:
            text = self._send("call", request, timeout)
        except CallTimeout:
            msg = f"{name} did not finish within {timeout:g}s; it goes on running in the agent"
            raise CallTimeout(msg, reason=Reason.STILL_RUNNING, data={"task": name}) from None
        return self._connection.reply(text)

    def _options(self, **options: Any) -> str:
        """A call's options as JSON text, with this client's trace when it has one."""
        if self.traceparent:
            options["traceparent"] = self.traceparent
        return wire.dumps(options)

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
        args_json, kwargs_json = encode_arguments(args, kwargs or {})
        options = self._options(lock_wait=lock_wait, detach=detach, wait=wait)
        request = {
            "name": name,
            "args_json": args_json,
            "kwargs_json": kwargs_json,
            "options_json": options,
        }
        limit = self.timeout + wait + lock_wait  # the options' waits, inside options_json
        snapshot: dict[str, Any] = self._connection.reply(self._send("run", request, limit))
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
                    f"as job {job_id}"
                )
                raise CallTimeout(
                    msg, job=job_id, reason=Reason.STILL_RUNNING, data={"job": job_id}
                )
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
        result: list[dict[str, Any]] = self._result("jobs")
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
        result: list[dict[str, Any]] = self._result(
            "history", {"since": since, "task": task, "identity": identity, "limit": limit}
        )
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask job *job_id* to stop; ``{"job", "requested", "state"}``."""
        result: dict[str, Any] = self._result("cancel", {"job_id": job_id})
        return result

    def events(self, job_id: str, since: int = 0, wait: float = 0.0) -> dict[str, Any]:
        """Job *job_id*'s events from *since* on (waiting up to *wait* s for new ones), with
        its summary."""
        snapshot: dict[str, Any] = self._result(
            "events", {"job_id": job_id, "cursor": since, "wait": wait}
        )
        return snapshot

    # -- introspection (agent side: app_agent/_introspection/)

    def stack(self) -> dict[str, Any]:
        """Every thread's frames (innermost last), agent threads marked, and the asyncio
        tasks of the app's event loop (``None`` when the agent runs on none)."""
        result: dict[str, Any] = self._result("stack")
        return result

    def stats(self, objects: int = 0) -> dict[str, Any]:
        """pid, uptime, memory, CPU, threads, descriptors, GC, versions; with *objects*, the
        most common object types by count."""
        result: dict[str, Any] = self._result("stats", {"objects": objects})
        return result

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        """Run the app's health checks and the agent's built-in ones (each fails after its
        own timeout, and none runs past *timeout* seconds): the report when all pass;
        Unhealthy, with every check's outcome in ``.checks``, when one fails."""
        report: dict[str, Any] = self._result("health", {"timeout": float(timeout)})
        if not report.get("healthy"):
            raise Unhealthy(
                unhealthy_message(report["checks"]), report["checks"], reason=Reason.CHECK_FAILED
            )
        return report

    def profile(self, seconds: float, rate: float = 100.0, idle: bool = False) -> dict[str, Any]:
        """Sample every thread's stack *rate* times a second for *seconds*: the frames and the
        counted stacks (rpcctl._flamegraph turns them into collapsed stacks, speedscope or
        SVG). Busy while another profile of the app runs."""
        result: dict[str, Any] = self._result(
            "profile", {"seconds": float(seconds), "rate": float(rate), "idle": idle}
        )
        return result

    def mem(self, seconds: float = 10.0, top: int = 10, group_by: str = "line") -> dict[str, Any]:
        """Trace the app's allocations (tracemalloc) for *seconds*: the *top* allocation sites
        that grew, grouped by ``line`` (the app's frame), ``file`` or ``traceback``, with
        ``{top: [{file, line, size_diff, count_diff, traceback, ...}], seconds, overhead,
        tracing}``. Tracing stops after, and as soon as this connection closes. Busy while
        another diagnosis of the app runs."""
        result: dict[str, Any] = self._result(
            "mem", {"seconds": float(seconds), "top": top, "group_by": group_by}
        )
        return result

    def log_level(
        self,
        level: str | int | None = None,
        logger: str | None = None,
        duration: float | None = None,
    ) -> dict[str, Any]:
        """Without *level*: the levels of *logger* (default: the root and every logger with
        a level of its own). With *level*: set it, for *duration* seconds when given (the
        agent puts the old level back by itself, client or no client)."""
        result: dict[str, Any] = self._result(
            "log_level", {"logger": logger, "level": level, "for_s": duration}
        )
        return result

    # -- the remote console (agent side: app_agent/_console/session.py) ----------------------------

    def console_open(self) -> dict[str, Any]:
        """Open this connection's console session inside the app: ``{session, app, pid, node,
        python, idle_timeout, log_statements}``. AuthenticationFailed (exit 5) when the app
        has not turned its console on."""
        result: dict[str, Any] = self._result("console_open")
        return result

    def console_push(self, source: str, wait: float = 0.5) -> dict[str, Any]:
        """Run *source* (complete statements) in the session, inside the app; its output so
        far, all of it when it ends within *wait* seconds: ``{statement, events, cursor,
        dropped, state[, error]}``, *state* ``running`` until it ends."""
        result: dict[str, Any] = self._result("console_push", {"source": source, "wait": wait})
        return result

    def console_poll(self, cursor: int, wait: float = 0.5) -> dict[str, Any]:
        """The running statement's output from *cursor* on (as :meth:`console_push`),
        waiting up to *wait* seconds for news."""
        result: dict[str, Any] = self._result("console_poll", {"cursor": cursor, "wait": wait})
        return result

    def console_interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running statement, where possible; False when
        none runs."""
        result: dict[str, Any] = self._result("console_interrupt")
        return bool(result["interrupted"])

    def console_close(self) -> dict[str, Any]:
        """End the session: ``{statements, failed}``."""
        result: dict[str, Any] = self._result("console_close")
        return result


def _is_default(arg: Arg, value: Any) -> bool:
    default = arg.default
    return type(value) is type(default) and value == default


def dropped_event(since: int, count: int) -> dict[str, Any]:
    """The note :meth:`Client.follow` passes on where *count* events from *since* on were
    dropped by the agent before this client could read them."""
    return {"type": "dropped", "from_seq": since, "count": count}


def unhealthy_message(checks: list[dict[str, Any]]) -> str:
    """``unhealthy: NAME: message; ...`` for the failed checks."""
    failed = [f"{c['name']}: {c.get('message') or 'failed'}" for c in checks if not c["ok"]]
    return "unhealthy: " + "; ".join(failed)


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


def encode_arguments(args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> tuple[str, str]:
    """Task arguments as the JSON texts a call carries; UsageError when they are not JSON
    data."""
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
        msg = (
            "task arguments are nested too deeply to be sent "
            f"(the agent takes {MAX_NESTING} levels)"
        )
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
    traceparent: str | None = None,
) -> Client:
    """Connect to the agent at *node* (default ``RPCCTL_NODE``); use as a context manager.

    The cookie comes from *cookie*, *cookie_file*, ``RPCCTL_COOKIE`` or
    ``RPCCTL_COOKIE_FILE``; for tls:// nodes, *tls_ca* is the CA that signed the agent's
    certificate and *tls_cert*/*tls_key* the client's own (``RPCCTL_TLS_*`` by default).
    *identity* (default ``RPCCTL_IDENTITY``) names who we are to an agent with an access
    file; the cookie is that identity's. *traceparent* (a W3C trace context, such as
    ``00-<trace id>-<span id>-01``) makes every job this client starts a span of that trace
    in the app (docs/operations.md, "Tracing").
    """
    if security is None:
        security = Security.resolve(cookie, cookie_file, tls_ca, tls_cert, tls_key, identity)
    return Client(
        resolve_address(node), timeout=timeout, security=security, traceparent=traceparent
    )


def _traceparent(given: str | None) -> str | None:
    """*given* when it is a W3C traceparent (UsageError otherwise), else the trace of the
    running rpcctl command (rpcctl._tracing), if any."""
    from app_agent.wire import tracecontext
    from rpcctl import _tracing

    if given is None:
        return _tracing.outgoing()
    if tracecontext.parse(given) is None:
        msg = f"traceparent {given!r} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)"
        raise UsageError(msg)
    return given
