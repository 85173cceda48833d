"""The remote console: Python statements run inside the live app (``rpcctl remote``).

Off unless the app turns it on (``app_agent.start(console=True)`` or ``RPCCTL_CONSOLE=1``):
a caller who may run the app's release tasks may not, by that alone, run any code in it.

One session per connection, with a namespace of its own holding ``app_agent`` and the app's
``__main__`` module. Each statement runs on a thread of its own, as a job of its own
(:class:`app_agent._jobs.table.Job`): what it prints is captured through the same context variable
as a task's output (never the app's own stdout, never another thread's), kept in the same
bounded buffer, and long-polled by the client. Expression values are shown by a display
function of the session's own, so the app's ``sys.displayhook`` and ``builtins._`` stay
untouched. An exception, ``SystemExit`` and ``KeyboardInterrupt`` included, ends only its
statement: its traceback goes to the client and the session goes on.

Interrupting raises ``KeyboardInterrupt`` in the statement's thread with
``PyThreadState_SetAsyncExc``: Python code stops at once; a call blocked in C (``time.sleep``,
a socket read) only when it returns.

Every session and statement is audited: ``console.opened``, ``console.statement`` (when it
starts: its size, and its text only when the app opted in), ``console.statement_finished``
and ``console.closed``.
"""

from __future__ import annotations

import ast
import builtins
import ctypes
import itertools
import os
import sys
import threading
import time
import traceback
import types
from typing import TYPE_CHECKING, Any

from app_agent import wire
from app_agent._jobs import capture as _capture
from app_agent._jobs.table import FAILED, SUCCEEDED, Job
from app_agent._registry import Task
from app_agent.wire import ErrorKind, Reason
from app_agent.wire import environment as env

if TYPE_CHECKING:
    from app_agent._state import AgentState

MAX_STATEMENT = 1 << 20
"""Characters one push may carry."""
MAX_WAIT = 30.0
"""Seconds a push or poll may wait for news."""
FILENAME = "<console>"
_DISPLAY = "__rpcctl_display__"

ENABLE_HINT = (
    "the remote console is off in this app: enable it with app_agent.start(console=True) "
    f"or {env.CONSOLE}=1 in the app's environment (a console runs any Python code inside "
    "the app: see docs/security.md)"
)

_SESSION_IDS = itertools.count(1)


def _statement_task() -> Task:
    def console() -> None:
        """A console statement."""

    return Task(name="console", func=console)


_TASK = _statement_task()


class Session:
    """One console session: a namespace, the statement running now, the audit trail."""

    def __init__(
        self, state: AgentState, caller: str, auth: str, identity: str | None = None
    ) -> None:
        import app_agent

        self.id = os.urandom(4).hex()
        self.caller = caller
        self.auth = auth
        config = state.config
        self.log_statements = bool(config and config.console_log_statements)
        # Every console line says who, as every other audit line does.
        self.log = state.log.bind(caller=caller, auth=auth, identity=identity, session=self.id)
        self.namespace: dict[str, Any] = {
            "__name__": "__console__",
            "__doc__": None,
            "__builtins__": builtins,
            "app_agent": app_agent,
            "__main__": sys.modules.get("__main__"),
            _DISPLAY: self._display,
        }
        self.opened = time.monotonic()
        self.statements = 0
        self.failed = 0
        self._follower = next(_SESSION_IDS)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._thread: int | None = None  # the running statement's thread, while it runs
        self._closed = False

    # -- statements --------------------------------------------------------------------------

    def push(self, source: str, wait: float) -> dict[str, Any]:
        """Run *source*; its output so far (all of it when it ends within *wait* s)."""
        with self._lock:
            if self._current is not None and not self._current.done:
                msg = "a statement is still running: poll it or interrupt it first"
                raise ValueError(msg)
            self.statements += 1
            number = self.statements
            job = Job(f"{self.id}-{number}", _TASK, self.caller)
            job.attach(self._follower, 0)  # the client follows it: its output waits for it
            self._current = job
        fields: dict[str, Any] = {
            "statement": number,
            "bytes": len(source.encode("utf-8", "surrogatepass")),
            "lines": len(source.splitlines()) or 1,
        }
        if self.log_statements:
            fields["source"] = source
        self.log.info("console.statement", **fields)
        started = time.perf_counter()
        try:
            code = _compile(source)
        except (SyntaxError, ValueError, OverflowError) as exc:
            job.write("stderr", "".join(traceback.format_exception_only(type(exc), exc)))
            self._finish(job, number, started, exc)
        else:
            thread = threading.Thread(
                target=self._run,
                args=(job, code, number, started),
                name=f"rpcctl-console-{self.id}",
                daemon=True,
            )
            thread.start()
        job.wait(wait)
        return self.poll(0, 0.0)

    def poll(self, cursor: int, wait: float) -> dict[str, Any]:
        """The current statement's output from *cursor* on, waiting up to *wait* s."""
        job = self._current
        if job is None:
            msg = "no statement has run in this session yet"
            raise ValueError(msg)
        snapshot = job.events_since(cursor, wait, self._follower)
        reply = {
            "statement": snapshot["id"],
            "events": snapshot["events"],
            "cursor": snapshot["cursor"],
            "dropped": snapshot["dropped"],
            "state": snapshot["state"],
        }
        if "error" in snapshot:
            reply["error"] = snapshot["error"]
        return reply

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running statement; False when none runs."""
        with self._lock:
            job = self._current
            if job is None or job.done or self._thread is None:
                return False
            job.cancel_requested.set()  # app_agent.cancelled() says so inside it
            _async_raise(self._thread, KeyboardInterrupt)
        self.log.info("console.interrupted", statement=job.id)
        return True

    def _run(self, job: Job, code: types.CodeType, number: int, started: float) -> None:
        _capture.reinstall()  # whatever the app did to sys.stdout since, not its stdout
        token = _capture.current_job.set(job)
        job.thread = threading.get_ident()
        with self._lock:
            self._thread = job.thread
        error: BaseException | None = None
        try:
            try:
                exec(code, self.namespace)  # noqa: S102  (the console's purpose, opted into)
            # Anything, SystemExit and KeyboardInterrupt included, ends only this statement.
            except BaseException as exc:  # noqa: BLE001
                error = exc
            self._no_more_interrupts()
        except KeyboardInterrupt:  # an interrupt that landed as the statement ended
            self._no_more_interrupts()
        try:
            if error is not None:
                # Drop this frame (the exec): the traceback starts in the console's code.
                tb = error.__traceback__.tb_next if error.__traceback__ is not None else None
                job.write("stderr", _format(error, tb))
        finally:
            job.thread = None
            _capture.current_job.reset(token)
            self._finish(job, number, started, error)

    def _no_more_interrupts(self) -> None:
        """The statement has ended: no interrupt may be sent to its thread any more, and
        one sent a moment ago is withdrawn."""
        with self._lock:
            self._thread = None
        _async_raise(threading.get_ident(), None)

    def _finish(self, job: Job, number: int, started: float, error: BaseException | None) -> None:
        duration = round((time.perf_counter() - started) * 1000, 3)
        if error is None:
            job.finish(SUCCEEDED)
            self.log.info(
                "console.statement_finished",
                statement=number,
                outcome=SUCCEEDED,
                duration_ms=duration,
            )
            return
        with self._lock:
            self.failed += 1
        kind = type(error).__qualname__
        job.finish(
            FAILED,
            error={
                "kind": str(ErrorKind.TASK_FAILED),
                "type": kind,
                "message": _message(error),
            },
        )
        self.log.info(
            "console.statement_finished",
            statement=number,
            outcome=FAILED,
            error=kind,
            duration_ms=duration,
        )

    def _display(self, value: Any) -> None:
        """Show an expression statement's value, as the interactive interpreter does."""
        if value is None:
            return
        self.namespace["_"] = value
        text = repr(value) + "\n"
        job = _capture.current_job.get()
        if job is not None:  # straight to the statement, whatever the app did to sys.stdout
            job.write("stdout", text)

    # -- the end ---------------------------------------------------------------------------

    def close(self, reason: str) -> None:
        """End the session; a statement still running is interrupted (where possible)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        running = self.interrupt()
        if self._current is not None:
            self._current.detach(self._follower)  # nobody reads its output any more
        self.log.info(
            "console.closed",
            reason=reason,
            statements=self.statements,
            failed=self.failed,
            interrupted_running=running,
            duration_s=round(time.monotonic() - self.opened, 3),
        )


def _compile(source: str) -> types.CodeType:
    """*source* compiled with each top-level expression statement shown, as the interactive
    interpreter shows them, but through the session's display function."""
    tree = ast.parse(source, FILENAME, "exec")
    for i, statement in enumerate(tree.body):
        if isinstance(statement, ast.Expr):
            call = ast.Call(ast.Name(_DISPLAY, ast.Load()), [statement.value], [])
            tree.body[i] = ast.copy_location(ast.Expr(call), statement)
    ast.fix_missing_locations(tree)
    return compile(tree, FILENAME, "exec")


def _format(error: BaseException, tb: types.TracebackType | None) -> str:
    try:
        return "".join(traceback.format_exception(type(error), error, tb))
    except Exception as inner:  # noqa: BLE001  (an exception whose str() raises)
        return f"{type(error).__qualname__}: <str() failed: {type(inner).__name__}>\n"


def _message(error: BaseException) -> str:
    try:
        return str(error)[:500]
    except Exception:  # noqa: BLE001
        return ""


def _async_raise(thread: int, exc: type[BaseException] | None) -> None:
    """Have *thread* raise *exc* at its next bytecode (None withdraws a pending one)."""
    target = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), target)


# -- what the console's handlers (app_agent/_console/handlers.py) call ---------------------


def open_session(
    state: AgentState, caller: str, auth: str, current: Session | None, identity: str | None = None
) -> tuple[str, Session | None]:
    """The reply to ``console_open``, and the connection's session after it."""
    config = state.config
    if config is None or not config.console:
        state.log.warning(
            "console.refused", caller=caller, auth=auth, identity=identity, reason="console off"
        )
        return wire.error(ErrorKind.AUTH, ENABLE_HINT, Reason.CONSOLE_OFF), current
    if current is not None:
        return wire.error(
            ErrorKind.USAGE, "a console session is already open here", Reason.CONSOLE_SESSION
        ), current
    session = Session(state, caller, auth, identity)
    session.log.info("console.opened", log_statements=session.log_statements)
    reply = {
        "session": session.id,
        "app": state.app,
        "pid": os.getpid(),
        "node": state.node,
        "python": sys.version.split()[0],
        "idle_timeout": config.idle_timeout,
        "log_statements": session.log_statements,
    }
    return wire.ok(reply), session


def push(session: Session | None, source: Any, wait: Any) -> str:
    if session is None:
        return _no_session()
    if type(source) is not str or type(wait) not in (int, float) or wait < 0:
        return wire.error(
            ErrorKind.USAGE, "console_push() takes source text and seconds", Reason.BAD_ARGUMENTS
        )
    if len(source) > MAX_STATEMENT:
        msg = f"a statement may have at most {MAX_STATEMENT:,} characters"
        return wire.error(ErrorKind.USAGE, msg, Reason.ARGUMENTS_TOO_BIG)
    try:
        return wire.ok(session.push(source, min(float(wait), MAX_WAIT)))
    except ValueError as exc:
        return wire.error(ErrorKind.USAGE, str(exc), Reason.BAD_ARGUMENTS)


def poll(session: Session | None, cursor: Any, wait: Any) -> str:
    if session is None:
        return _no_session()
    if type(cursor) is not int or type(wait) not in (int, float) or wait < 0:
        return wire.error(
            ErrorKind.USAGE, "console_poll() takes a cursor and seconds", Reason.BAD_ARGUMENTS
        )
    try:
        return wire.ok(session.poll(max(cursor, 0), min(float(wait), MAX_WAIT)))
    except ValueError as exc:
        return wire.error(ErrorKind.USAGE, str(exc), Reason.BAD_ARGUMENTS)


def interrupt(session: Session | None) -> str:
    if session is None:
        return _no_session()
    return wire.ok({"interrupted": session.interrupt()})


def close(session: Session | None, reason: str) -> str:
    if session is None:
        return _no_session()
    session.close(reason)
    return wire.ok({"statements": session.statements, "failed": session.failed})


def _no_session() -> str:
    message = "no console session on this connection: open one first"
    return wire.error(ErrorKind.USAGE, message, Reason.CONSOLE_SESSION)
