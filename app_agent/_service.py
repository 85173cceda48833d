"""The RPyC service: the only methods a caller can reach.

Every argument arrives as a ``str`` holding JSON and every result leaves as a ``str``
holding a reply envelope (see :mod:`app_agent.wire`), so no netref ever crosses in either
direction: the service never touches an object that lives in the caller's process.
"""

from __future__ import annotations

import difflib
import os
import platform
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import rpyc
from rpyc.core.protocol import Connection

from app_agent import _readiness as readiness
from app_agent import wire
from app_agent._jobs import CANCELLED, SUCCEEDED, TIMED_OUT, Job, JobTable
from app_agent._locks import Backend, Busy
from app_agent._registry import Registry, Task
from app_agent._version import __version__
from app_agent.wire import ErrorKind

if TYPE_CHECKING:
    from collections.abc import Callable

PROTOCOL_CONFIG: dict[str, Any] = {
    # Only the service's allow-listed methods are reachable (see AgentService._rpyc_getattr).
    "allow_safe_attrs": False,
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "propagate_SystemExit_locally": False,
    "propagate_KeyboardInterrupt_locally": False,
    "log_exceptions": False,
}


class AgentState:
    """What every connection's service shares: the registry, jobs, identity."""

    def __init__(
        self, registry: Registry, node: str, app: str, log: Any, locks: Backend, loop: Any = None
    ) -> None:
        self.registry = registry
        self.node = node
        self.app = app
        self.log = log
        self.jobs = JobTable(locks, loop)
        self.started_at = time.time()
        self.stop_handler: Callable[[], None] | None = None

    def request_stop(self, restart: bool) -> str:
        """Stop (or restart) the app gracefully; how it was asked: runner, handler or signal.

        Under ``rpcctl start`` the runner is asked, so its pre_stop and post_stop hooks run;
        otherwise the app's own stop handler runs, or the process gets SIGTERM.
        """
        runner = os.environ.get(wire.RUNNER_ENV, "")
        if runner.isdigit() and wire.pid_alive(int(runner)):
            os.kill(int(runner), signal.SIGHUP if restart else signal.SIGTERM)
            return "runner"
        if restart:
            msg = "restart needs the release runner: start the app with `rpcctl start`"
            raise ValueError(msg)
        if self.stop_handler is not None:
            # On its own thread: the handler may stop the agent, this connection included.
            threading.Thread(target=self.stop_handler, name="rpcctl-stop", daemon=True).start()
            return "handler"
        os.kill(os.getpid(), signal.SIGTERM)
        return "signal"


class _AgentConnection(Connection):  # type: ignore[misc]
    """RPyC's connection, running its service's after-reply actions once a reply is sent.

    The per-call audit line costs about as much as the rest of the agent's work on a call;
    written after the reply has left, it no longer delays the caller, and it stays on the
    connection's own thread, in call order.
    """

    def _dispatch_request(self, seq: Any, raw_args: Any) -> None:
        super()._dispatch_request(seq, raw_args)
        service = self._local_root
        if isinstance(service, AgentService):
            service.run_after_reply()


class AgentService(rpyc.Service):  # type: ignore[misc]
    """One instance per connection; the caller can reach only ``EXPOSED``."""

    EXPOSED: ClassVar[frozenset[str]] = frozenset(
        {"ping", "info", "tasks", "call", "run", "events", "jobs", "cancel", "stop"}
        | {"stack", "stats", "health", "profile", "log_level"}  # app_agent/_introspect.py
    )

    _protocol = _AgentConnection

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._caller = "unknown"
        self._auth = "none"
        self._after_reply: list[Callable[[], None]] = []

    def run_after_reply(self) -> None:
        while self._after_reply:
            self._after_reply.pop(0)()

    def on_connect(self, conn: Any) -> None:
        credentials = conn._config.get("credentials")
        if isinstance(credentials, dict):
            self._caller = str(credentials.get("peer", "unknown"))
            self._auth = str(credentials.get("auth", "none"))

    def _rpyc_getattr(self, name: Any) -> Any:
        if type(name) is str and name in self.EXPOSED:
            return getattr(self, f"exposed_{name}")
        msg = "access denied"
        raise AttributeError(msg)

    def _rpyc_setattr(self, name: Any, value: Any) -> None:
        msg = "access denied"
        raise AttributeError(msg)

    def _rpyc_delattr(self, name: Any) -> None:
        msg = "access denied"
        raise AttributeError(msg)

    # -- the exposed methods ------------------------------------------------------------

    def exposed_ping(self) -> str:
        return "pong"

    def exposed_info(self) -> str:
        state = self._state
        return wire.ok(
            {
                "app": state.app,
                "pid": os.getpid(),
                "node": state.node,
                "started_at": state.started_at,
                "uptime_s": round(time.time() - state.started_at, 3),
                "versions": {
                    "rpcctl": __version__,
                    "protocol": wire.PROTOCOL_VERSION,
                    "python": platform.python_version(),
                    "rpyc": rpyc.__version__,
                },
                "python": sys.executable,
                "jobs": [job.summary() for job in state.jobs.running()],
                "ready": readiness.ready,
                "event_loop": state.jobs.loop is not None,
            }
        )

    def exposed_tasks(self) -> str:
        return wire.ok([t.describe() for t in self._state.registry.all()])

    def exposed_stop(self, restart: Any = False) -> str:
        log = self._state.log.bind(caller=self._caller, auth=self._auth)
        if type(restart) is not bool:
            return wire.error(ErrorKind.USAGE, "stop() takes one boolean: restart")
        try:
            how = self._state.request_stop(restart)
        except ValueError as exc:
            log.info("stop.refused", restart=restart, reason=str(exc))
            return wire.error(ErrorKind.USAGE, str(exc))
        log.info("stop.requested", restart=restart, via=how)
        return wire.ok({"pid": os.getpid(), "via": how})

    def exposed_call(
        self, name: Any, args_json: Any = "[]", kwargs_json: Any = "{}", options_json: Any = "{}"
    ) -> str:
        """Run a task and answer with its result, in one round trip."""
        started = time.perf_counter()
        prepared = self._prepare(name, args_json, kwargs_json, options_json)
        if isinstance(prepared, str):
            return prepared
        task, job, args, kwargs, options = prepared
        # Tasks without an agent-side timeout run on this connection's thread.
        inline = task.timeout is None
        busy = self._start(job, args, kwargs, options, started, inline=inline)
        if busy is not None:
            return busy
        if not inline:
            job.wait(None)
        self._after_reply.append(lambda: self._log_finished(job, started))
        return _outcome(job)

    def exposed_run(
        self, name: Any, args_json: Any = "[]", kwargs_json: Any = "{}", options_json: Any = "{}"
    ) -> str:
        """Start a task as a job; answer with its first events (or at once, detached)."""
        started = time.perf_counter()
        prepared = self._prepare(name, args_json, kwargs_json, options_json)
        if isinstance(prepared, str):
            return prepared
        task, job, args, kwargs, options = prepared
        job.on_finish = lambda: self._log_finished(job, started)
        busy = self._start(job, args, kwargs, options, started)
        if busy is not None:
            return busy
        self._state.log.info("job.started", job=job.id, task=task.name, caller=self._caller)
        wait = 0.0 if options["detach"] else options["wait"]
        return wire.ok(job.events_since(0, wait))

    def exposed_events(self, job_id: Any, cursor: Any = 0, wait: Any = 1.0) -> str:
        """A job's events from *cursor* on, waiting up to *wait* seconds for new ones."""
        if type(job_id) is not str or type(cursor) is not int or type(wait) not in (int, float):
            return wire.error(ErrorKind.USAGE, "events() takes a job id, a cursor and seconds")
        job = self._state.jobs.get(job_id)
        if job is None:
            return wire.error(ErrorKind.USAGE, _no_such_job(job_id))
        return wire.ok(job.events_since(max(cursor, 0), min(max(float(wait), 0.0), 30.0)))

    def exposed_jobs(self) -> str:
        """Recent and running jobs, newest first."""
        return wire.ok([job.summary() for job in reversed(self._state.jobs.all())])

    def exposed_cancel(self, job_id: Any) -> str:
        """Ask a running job to stop (cooperatively, or by cancelling its coroutine)."""
        if type(job_id) is not str:
            return wire.error(ErrorKind.USAGE, "cancel() takes a job id")
        job = self._state.jobs.get(job_id)
        if job is None:
            return wire.error(ErrorKind.USAGE, _no_such_job(job_id))
        requested = job.cancel()
        self._state.log.info(
            "job.cancel_requested", job=job.id, caller=self._caller, running=requested
        )
        return wire.ok({"job": job.id, "requested": requested, "state": job.state})

    def _prepare(
        self, name: Any, args_json: Any, kwargs_json: Any, options_json: Any
    ) -> str | tuple[Task, Job, tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """Validate a call: the task, a new job, bound arguments and options; or an error."""
        log = self._state.log
        who = {"caller": self._caller, "auth": self._auth}
        texts = (name, args_json, kwargs_json, options_json)
        if not all(type(t) is str for t in texts):
            log.warning("call.refused", reason="arguments are not JSON text", **who)
            return wire.error(ErrorKind.USAGE, "a call takes a task name and JSON text only")
        task = self._state.registry.get(name)
        if task is None:
            log.info("call.no_such_task", task=name, outcome="no_such_task", **who)
            return wire.error(ErrorKind.NO_SUCH_TASK, self._no_such_task(name))
        try:
            args, kwargs = _decode_arguments(args_json, kwargs_json)
            options = _decode_options(options_json)
            bound_args, bound_kwargs, named = task.bind(args, kwargs)
        except (ValueError, TypeError) as exc:
            log.info("call.bad_arguments", task=task.name, outcome="usage", error=str(exc), **who)
            return wire.error(
                ErrorKind.USAGE, f"{task.name}: {exc}", signature=task.display_signature
            )
        job = self._state.jobs.create(task, self._caller)
        # Argument names and sizes always; values only where the task opted in (they may
        # carry secrets).
        job.audit = {
            **who,
            "arguments": {k: len(wire.dumps(v)) for k, v in named.items()} if named else {},
        }
        if task.log_values:
            job.audit["values"] = named
        return task, job, bound_args, bound_kwargs, options

    def _start(
        self,
        job: Job,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        started: float,
        inline: bool = False,
    ) -> str | None:
        """Start *job*; the busy-lock error reply when its lock stays held, else None."""
        try:
            self._state.jobs.start(job, args, kwargs, options["lock_wait"], inline=inline)
        except Busy as busy:
            self._log_finished(job, started)
            return wire.error(ErrorKind.BUSY, str(busy), job=job.id)
        return None

    def _log_finished(self, job: Job, started: float) -> None:
        fields = {"task": job.task.name, "job": job.id, "outcome": job.state, **job.audit}
        fields["duration_ms"] = _ms(started)
        if job.state == SUCCEEDED:
            self._state.log.info("call.finished", **fields)
            return
        if job.error:
            kind = job.error.get("type") or job.error.get("kind")
            fields["error"] = f"{kind}: {job.error.get('message', '')}"
        self._state.log.warning("call.finished", **fields)

    # -- introspection (app_agent/_introspect.py, _health.py, _profile.py) ----------------
    # Their modules load on first use: an agent nobody looks into does not carry them.

    def exposed_stack(self) -> str:
        """Every thread's stack and the asyncio tasks of the app's loop."""
        from app_agent import _introspect

        self._audit("introspect.stack")
        return wire.ok(_introspect.stack(self._state.app, self._state.jobs.loop))

    def exposed_stats(self, objects: Any = 0) -> str:
        """Process figures; with *objects* > 0, that many of the most common object types."""
        if type(objects) is not int or objects < 0:
            return wire.error(ErrorKind.USAGE, "stats() takes a number of object types")
        from app_agent import _introspect

        state = self._state
        self._audit("introspect.stats", objects=objects)
        return wire.ok(_introspect.stats(state.app, state.node, state.started_at, objects))

    def exposed_health(self, timeout: Any = 10.0) -> str:
        """Run the built-in and the app's health checks, each within *timeout* seconds."""
        if type(timeout) not in (int, float) or not 0 < timeout <= 3600:
            return wire.error(ErrorKind.USAGE, "health() takes seconds, at most 3600")
        from app_agent import _health

        report = _health.report(self._state.jobs, float(timeout))
        failed = [c["name"] for c in report["checks"] if not c["ok"]]
        self._audit("health.checked", healthy=report["healthy"], failed=failed)
        return wire.ok(report)

    def exposed_profile(self, seconds: Any, rate: Any = 100.0, idle: Any = False) -> str:
        """Sample every thread *rate* times a second for *seconds*; the counted stacks."""
        from app_agent import _profile

        if (
            type(seconds) not in (int, float)
            or type(rate) not in (int, float)
            or type(idle) is not bool
            or not 0 < seconds <= _profile.MAX_SECONDS
            or not 1 <= rate <= _profile.MAX_RATE
        ):
            msg = "profile() takes seconds (at most 3600), a rate in Hz (1 to 1000) and a flag"
            return wire.error(ErrorKind.USAGE, msg)
        self._audit("profile.started", seconds=seconds, rate=rate, now=True)
        try:
            result = _profile.profile(float(seconds), float(rate), idle, self._caller)
        except _profile.ProfilerBusy as exc:
            return wire.error(ErrorKind.BUSY, str(exc))
        self._audit("profile.finished", samples=result["samples"])
        return wire.ok(result)

    def exposed_log_level(self, logger: Any = None, level: Any = None, for_s: Any = None) -> str:
        """Show, or set (for *for_s* seconds when given), a stdlib logger's level."""
        from app_agent import _introspect

        try:
            name = _introspect.logger_name(logger)
            if level is None:
                return wire.ok(_introspect.log_levels.show(None if logger is None else name))
            number = _introspect.parse_level(level)
            if for_s is not None and type(for_s) not in (int, float):
                return wire.error(ErrorKind.USAGE, "the duration must be a number of seconds")
            changed = _introspect.log_levels.set(name, number, for_s, self._log_reverted)
        except _introspect.LevelError as exc:
            return wire.error(ErrorKind.USAGE, str(exc))
        self._audit(
            "log_level.set",
            logger=changed["logger"],
            new_level=changed["level"],
            previous=changed["previous"],
            for_s=for_s,
        )
        return wire.ok(changed)

    def _log_reverted(self, logger: str, temporary: str, level: str) -> None:
        self._state.log.info("log_level.reverted", logger=logger, was=temporary, restored=level)

    def _audit(self, event: str, now: bool = False, **fields: Any) -> None:
        """Log who asked for what: at once, or (*now* False) once the reply has left."""
        log = self._state.log
        who = {"caller": self._caller, "auth": self._auth}
        if now:
            log.info(event, **who, **fields)
        else:
            self._after_reply.append(lambda: log.info(event, **who, **fields))

    def _no_such_task(self, name: str) -> str:
        hint = ""
        # Suggest a task whose last name part is close to the one asked for (a typo).
        wanted = name.rsplit(".", 1)[-1]
        scored = [
            (difflib.SequenceMatcher(None, wanted, t.name.rsplit(".", 1)[-1]).ratio(), t.name)
            for t in self._state.registry.all()
        ]
        best = max(scored, default=(0.0, ""))
        if best[0] >= 0.75:
            hint = f" (did you mean {best[1]}?)"
        return f"no task named {name!r}{hint}; `rpcctl tasks` lists the registered tasks"


def _outcome(job: Job) -> str:
    """A finished (or timed-out) job as a reply envelope."""
    if job.state == SUCCEEDED:
        return wire.ok(job.result)
    error = dict(job.error or {})
    kind = ErrorKind(error.pop("kind", ErrorKind.TASK_FAILED))
    message = error.pop("message", "")
    if kind is ErrorKind.TASK_FAILED:
        what = "was cancelled" if job.state == CANCELLED else f"raised {error.get('type')}"
        message = f"{job.task.name} {what}: {message}" if message else f"{job.task.name} {what}"
    elif job.state == TIMED_OUT:
        error["hint"] = f"rpcctl logs {job.id}"
    return wire.error(kind, message, job=job.id, **error)


def _no_such_job(job_id: str) -> str:
    return f"no job {job_id!r} (it may have left the history); `rpcctl jobs` lists recent jobs"


def _decode_options(options_json: str) -> dict[str, Any]:
    options: dict[str, Any] = {"lock_wait": 0.0, "detach": False, "wait": 1.0}
    if options_json == "{}":
        return options
    given = wire.loads(options_json)
    if not isinstance(given, dict) or set(given) - set(options):
        msg = f"options must be a JSON object with keys among {sorted(options)}"
        raise ValueError(msg)
    lock_wait = given.get("lock_wait", 0.0)
    wait = given.get("wait", 1.0)
    if not all(type(v) in (int, float) and v >= 0 for v in (lock_wait, wait)):
        msg = "lock_wait and wait must be non-negative numbers"
        raise ValueError(msg)
    options.update(lock_wait=float(lock_wait), wait=min(float(wait), 30.0))
    options["detach"] = bool(given.get("detach", False))
    return options


def _decode_arguments(args_json: str, kwargs_json: str) -> tuple[list[Any], dict[str, Any]]:
    if args_json == "[]" and kwargs_json == "{}":  # the common call: no arguments
        return [], {}
    try:
        args = wire.loads(args_json)
        kwargs = wire.loads(kwargs_json)
    except ValueError as exc:
        msg = f"arguments are not valid JSON: {exc}"
        raise ValueError(msg) from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        msg = "arguments must be a JSON list and keyword arguments a JSON object"
        raise ValueError(msg)
    return args, kwargs


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
