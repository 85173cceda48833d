"""The RPyC service: the only methods a caller can reach.

Every argument arrives as a ``str`` holding JSON and every result leaves as a ``str``
holding a reply envelope (see :mod:`app_agent.wire`), so no netref ever crosses in either
direction: the service never touches an object that lives in the caller's process.
"""

from __future__ import annotations

import difflib
import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import rpyc

from app_agent import _history, _process, wire
from app_agent import _readiness as readiness
from app_agent._access import READ, STOP
from app_agent._jobs import (
    CANCELLED,
    MAX_NESTING,
    SUCCEEDED,
    SUMMARY_ONLY,
    TIMED_OUT,
    Job,
    measure,
)
from app_agent._locks import Busy
from app_agent._registry import Task
from app_agent._service_console import ConsoleMethods
from app_agent._service_introspect import IntrospectionMethods
from app_agent._threads import NoThread
from app_agent._version import __version__
from app_agent.config import arguments_too_big
from app_agent.wire import ErrorKind
from app_agent.wire.words import REGISTER_TASKS

if TYPE_CHECKING:
    pass

PROTOCOL_CONFIG: dict[str, Any] = {
    # Only the service's exposed_ methods are reachable: RPyC's own rule, nothing else on.
    "allow_safe_attrs": False,
    "allow_exposed_attrs": True,
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


_MAX_OPTIONS = 1024
"""Characters of a call's options (three small values, as JSON)."""


class _Call(NamedTuple):
    """A validated call: its task, its job, the bound arguments and the options."""

    task: Task
    job: Job
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: dict[str, Any]


class _Refused(Exception):
    """A call that cannot go on; ``reply`` is its error envelope, ready to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class AgentService(IntrospectionMethods, ConsoleMethods):
    """One instance per connection; a caller reaches only its ``exposed_`` methods (RPyC's
    ``allow_exposed_attrs``, every other kind of attribute access off), and of those only
    what its *identity* is granted (every method checks at its top; see
    :meth:`ServiceBase._forbidden`). Introspection and the console live in their own
    modules (``_service_introspect``, ``_service_console``)."""

    # -- the exposed methods ------------------------------------------------------------

    def exposed_ping(self) -> str:
        return "pong"

    def exposed_info(self) -> str:
        if (refused := self._forbidden(READ, "read info")) is not None:
            return refused
        state = self._state
        return wire.ok(
            {
                "app": state.app,
                "version": state.version,
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
        """The registered tasks this connection's identity may run."""
        if (refused := self._forbidden(READ, "list tasks")) is not None:
            return refused
        runnable = [t for t in self._state.registry.all() if self._identity.may_run(t.name)]
        return wire.ok([t.describe() for t in runnable])

    def exposed_stop(self, restart: Any = False) -> str:
        if (refused := self._forbidden(STOP, "stop the app")) is not None:
            return refused
        log = self._state.log.bind(**self._who)
        if type(restart) is not bool:
            return wire.error(ErrorKind.USAGE, "stop() takes one boolean: restart")
        try:
            how = _process.request_stop(self._state.stop_handler, restart, self._state.log)
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
        try:
            call = self._prepare(name, args_json, kwargs_json, options_json)
            job = call.job
            # Tasks without an agent-side timeout run on this connection's thread.
            inline = call.task.timeout is None
            # Hold the job's result for this reply, however big (the history may not keep it).
            job.attach(self._follower, SUMMARY_ONLY)
            try:
                self._start(call, started, inline=inline)
                if not inline:
                    job.wait(None)
                self._after_reply.append(lambda: self._log_finished(job, started))
                return _outcome(job)
            finally:
                job.detach(self._follower)
        except _Refused as refused:
            return refused.reply

    def exposed_run(
        self, name: Any, args_json: Any = "[]", kwargs_json: Any = "{}", options_json: Any = "{}"
    ) -> str:
        """Start a task as a job; answer with its first events (or at once, detached)."""
        started = time.perf_counter()
        try:
            call = self._prepare(name, args_json, kwargs_json, options_json)
            job = call.job
            job.on_finish = lambda: self._log_finished(job, started)
            follower = None
            if not call.options["detach"]:
                # Following from the first line: nothing is dropped before the first events().
                job.attach(self._follower, 0)
                follower = self._track(job)
            self._start(call, started)
        except _Refused as refused:
            return refused.reply
        self._state.log.info("job.started", job=job.id, task=job.task.name, **self._who)
        wait = 0.0 if call.options["detach"] else call.options["wait"]
        return _snapshot_reply(job.events_since(0, wait, follower))

    def exposed_events(self, job_id: Any, cursor: Any = 0, wait: Any = 1.0) -> str:
        """A job's events from *cursor* on, waiting up to *wait* seconds for new ones."""
        if type(job_id) is not str or type(cursor) is not int or type(wait) not in (int, float):
            return wire.error(ErrorKind.USAGE, "events() takes a job id, a cursor and seconds")
        job = self._state.jobs.get(job_id)
        if job is None:
            return wire.error(ErrorKind.USAGE, _no_such_job(job_id))
        # Whoever may run a task may follow its jobs; read shows any job's output.
        if not self._identity.may_run(job.task.name) and (
            refused := self._forbidden(READ, f"read the output of job {job.id}")
        ):
            return refused
        follower = self._track(job)
        wait = min(max(float(wait), 0.0), 30.0)
        return _snapshot_reply(job.events_since(max(cursor, 0), wait, follower))

    def exposed_jobs(self) -> str:
        """Recent and running jobs, newest first: summaries, without results or tracebacks
        (``events`` of one job carries those)."""
        if (refused := self._forbidden(READ, "list jobs")) is not None:
            return refused
        return wire.ok([job.summary(full=False) for job in reversed(self._state.jobs.all())])

    def exposed_history(self, *args: Any, **kwargs: Any) -> str:
        """Finished jobs from the durable store (app_agent/_history.py), newest first."""
        if (refused := self._forbidden(READ, "read the job history")) is not None:
            return refused
        return _history.answer(self._state.jobs.history, args, kwargs)

    def exposed_cancel(self, job_id: Any) -> str:
        """Ask a running job to stop (cooperatively, or by cancelling its coroutine)."""
        if type(job_id) is not str:
            return wire.error(ErrorKind.USAGE, "cancel() takes a job id")
        if job_id.startswith("profile-"):
            return self._cancel_profile(job_id)
        job = self._state.jobs.get(job_id)
        if job is None:
            return wire.error(ErrorKind.USAGE, _no_such_job(job_id))
        if not self._identity.may_run(job.task.name):
            return self._may_not_run(job.task.name, f"cancel job {job.id}")
        requested = job.cancel()
        self._state.log.info("job.cancel_requested", job=job.id, running=requested, **self._who)
        return wire.ok({"job": job.id, "requested": requested, "state": job.state})

    def _track(self, job: Job) -> int:
        """Remember that this connection reads *job*'s events (so that the job stops waiting
        for it when the connection goes); this connection's follower key."""
        for job_id, other in list(self._following.items()):
            if other is not job and not other.followed_by(self._follower):
                del self._following[job_id]  # it read that job's end (or was left behind)
        self._following[job.id] = job
        return self._follower

    def _prepare(self, name: Any, args_json: Any, kwargs_json: Any, options_json: Any) -> _Call:
        """Validate a call: the task, a new job, bound arguments and options. _Refused (its
        reply ready) when the call cannot go on; a job that exists has then ended."""
        log = self._state.log
        who = self._who
        texts = (name, args_json, kwargs_json, options_json)
        if not all(type(t) is str for t in texts):
            log.warning("call.refused", reason="arguments are not JSON text", **who)
            raise _Refused(
                wire.error(ErrorKind.USAGE, "a call takes a task name and JSON text only")
            )
        task = self._state.registry.get(name)
        # A task the identity may not run is refused whether or not it exists: its answer
        # must not tell which tasks the agent has. Checked before a byte of the arguments
        # is decoded: what a caller may not run costs the app nothing more.
        if not self._identity.may_run(task.name if task is not None else name):
            raise _Refused(self._may_not_run(task.name if task is not None else name, asked=name))
        if task is None:
            log.info("call.no_such_task", task=name, outcome="no_such_task", **who)
            raise _Refused(wire.error(ErrorKind.NO_SUCH_TASK, self._no_such_task(name)))
        limit = self._max_argument_bytes
        if len(args_json) + len(kwargs_json) > limit or len(options_json) > _MAX_OPTIONS:
            size = len(args_json) + len(kwargs_json) + len(options_json)
            log.info("call.bad_arguments", task=task.name, outcome="usage", bytes=size, **who)
            raise _Refused(wire.error(ErrorKind.USAGE, arguments_too_big(size, limit)))
        try:
            args, kwargs = _decode_arguments(args_json, kwargs_json)
            options = _decode_options(options_json)
            bound_args, bound_kwargs, named = task.bind(args, kwargs)
        except (ValueError, TypeError) as exc:
            log.info("call.bad_arguments", task=task.name, outcome="usage", error=str(exc), **who)
            reply = wire.error(
                ErrorKind.USAGE, f"{task.name}: {exc}", signature=task.display_signature
            )
            raise _Refused(reply) from None
        caller = (
            self._caller if self._identity.name is None else f"{self._identity} ({self._caller})"
        )
        job = self._state.jobs.create(task, caller)
        try:
            # Argument names and sizes always; values only where the task opted in (they
            # may carry secrets).
            job.audit = {
                **who,
                "argument_sizes": {k: len(wire.dumps(v)) for k, v in named.items()}
                if named
                else {},
            }
            if task.log_values:
                job.audit["values"] = named
            if task.record_args:
                job.arguments = named
        except Exception as exc:  # noqa: BLE001  (whatever it is, the job must not stay running)
            raise _Refused(self._failed_to_start(job, exc)) from None
        return _Call(task, job, bound_args, bound_kwargs, options)

    def _start(self, call: _Call, started: float, inline: bool = False) -> None:
        """Start the call's job; _Refused with the error reply when it could not start (its
        lock stays held, no thread): the job has then ended, failed."""
        job = call.job
        try:
            self._state.jobs.start(
                job, call.args, call.kwargs, call.options["lock_wait"], inline=inline
            )
        except Busy as busy:
            self._log_finished(job, started)
            raise _Refused(wire.error(ErrorKind.BUSY, str(busy), job=job.id)) from None
        except NoThread as exc:  # the app is out of threads: busy, try again later
            self._log_finished(job, started)
            raise _Refused(wire.error(ErrorKind.BUSY, str(exc), job=job.id)) from None
        except Exception as exc:  # noqa: BLE001  (a lock backend down)
            self._log_finished(job, started)
            raise _Refused(_start_failed(job, exc)) from None

    def _failed_to_start(self, job: Job, exc: Exception) -> str:
        self._state.jobs.fail(job, exc)
        self._state.log.warning(
            "call.failed_to_start", task=job.task.name, job=job.id, error=repr(exc)[:500]
        )
        return _start_failed(job, exc)

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

    def _no_such_task(self, name: str) -> str:
        if not self._state.registry.all():
            return f"no task named {name!r}: this app registers no tasks; {REGISTER_TASKS}"
        hint = ""
        # Suggest a task whose last name part is close to the one asked for (a typo).
        wanted = name.rsplit(".", 1)[-1]
        scored = [
            (difflib.SequenceMatcher(None, wanted, t.name.rsplit(".", 1)[-1]).ratio(), t.name)
            for t in self._state.registry.all()
            if self._identity.may_run(t.name)
        ]
        best = max(scored, default=(0.0, ""))
        if best[0] >= 0.75:
            hint = f" (did you mean {best[1]}?)"
        return f"no task named {name!r}{hint}; `rpcctl tasks` lists the registered tasks"


def _snapshot_reply(snapshot: dict[str, Any]) -> str:
    """A job snapshot as a reply envelope. Its events and outcome are JSON data already
    (see Job): re-converting would walk every event again, at five times the cost."""
    return wire.ok_plain(snapshot)


def _start_failed(job: Job, exc: Exception) -> str:
    return wire.error(
        ErrorKind.TASK_FAILED,
        f"{job.task.name} could not start: {type(exc).__name__}: {exc}",
        job=job.id,
        type=type(exc).__name__,
    )


def _outcome(job: Job) -> str:
    """A finished (or timed-out) job as a reply envelope."""
    if job.state == SUCCEEDED:
        return wire.ok_plain(job.result)  # converted to JSON data once, when the task returned
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
    too_deep = f"arguments are nested more than {MAX_NESTING} levels deep"
    try:
        args = wire.loads(args_json)
        kwargs = wire.loads(kwargs_json)
    except RecursionError:
        raise ValueError(too_deep) from None
    except ValueError as exc:
        msg = f"arguments are not valid JSON: {exc}"
        raise ValueError(msg) from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        msg = "arguments must be a JSON list and keyword arguments a JSON object"
        raise ValueError(msg)
    # The outer list or object is one level; the task sees what is inside it.
    if max(measure(args, 1 << 62)[1], measure(kwargs, 1 << 62)[1]) > MAX_NESTING + 1:
        raise ValueError(too_deep)
    return args, kwargs


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
