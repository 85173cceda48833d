"""Handlers of the jobs methods: run a task (call, run), follow a job (events), list and
cancel jobs.

Each handler takes the :class:`~app_agent._caller.Caller` and the method's arguments, bound
and type-checked by the service from :data:`app_agent.wire.protocol.METHODS`. These methods'
grants are the task's (``TASK``, ``TASK_OR_READ``): checked here, once the task is known.
"""

from __future__ import annotations

import difflib
import time
from typing import Any, NamedTuple

from app_agent import wire
from app_agent._caller import Caller
from app_agent._jobs import history as _history
from app_agent._jobs.locks import Busy
from app_agent._jobs.table import (
    CANCELLED,
    MAX_NESTING,
    SUCCEEDED,
    SUMMARY_ONLY,
    TIMED_OUT,
    Job,
    measure,
)
from app_agent._registry import Task
from app_agent._server.access import READ
from app_agent._server.threads import NoThread
from app_agent.config import arguments_too_big
from app_agent.wire import ErrorKind, Reason, tracecontext
from app_agent.wire.protocol import CALL_OPTIONS, MAX_WAIT, PROFILE_ID_PREFIX
from app_agent.wire.words import REGISTER_TASKS

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


def call(caller: Caller, name: str, args_json: str, kwargs_json: str, options_json: str) -> str:
    """Run a task and answer with its result, in one round trip."""
    started = time.perf_counter()
    try:
        prepared = _prepare(caller, name, args_json, kwargs_json, options_json)
        job = prepared.job
        # Tasks without an agent-side timeout run on this connection's thread.
        inline = prepared.task.timeout is None
        # Hold the job's result for this reply, however big (the history may not keep it).
        job.attach(caller.follower, SUMMARY_ONLY)
        try:
            _start(caller, prepared, started, inline=inline)
            if not inline:
                job.wait(None)
            caller.after_reply.append(lambda: _log_finished(caller, job, started))
            return _outcome(job)
        finally:
            job.detach(caller.follower)
    except _Refused as refused:
        return refused.reply


def run(caller: Caller, name: str, args_json: str, kwargs_json: str, options_json: str) -> str:
    """Start a task as a job; answer with its first events (or at once, detached)."""
    started = time.perf_counter()
    try:
        prepared = _prepare(caller, name, args_json, kwargs_json, options_json)
        job = prepared.job
        job.on_finish = lambda: _log_finished(caller, job, started)
        follower = None
        if not prepared.options["detach"]:
            # Following from the first line: nothing is dropped before the first events().
            job.attach(caller.follower, 0)
            follower = caller.track(job)
        _start(caller, prepared, started)
    except _Refused as refused:
        return refused.reply
    caller.state.log.info("job.started", job=job.id, task=job.task.name, **caller.who)
    wait = 0.0 if prepared.options["detach"] else prepared.options["wait"]
    return _snapshot_reply(job.events_since(0, wait, follower))


def events(caller: Caller, job_id: str, cursor: int, wait: float) -> str:
    """A job's events from *cursor* on, waiting up to *wait* seconds for new ones."""
    job = caller.state.jobs.get(job_id)
    if job is None:
        return _no_such_job(job_id)
    # Whoever may run a task may follow its jobs; read shows any job's output.
    if not caller.identity.may_run(job.task.name) and (
        refused := caller.forbidden(READ, f"read the output of job {job.id}")
    ):
        return refused
    follower = caller.track(job)
    wait = min(max(float(wait), 0.0), MAX_WAIT)
    return _snapshot_reply(job.events_since(max(cursor, 0), wait, follower))


def jobs(caller: Caller) -> str:
    """Recent and running jobs, newest first: summaries, without results or tracebacks
    (``events`` of one job carries those)."""
    return wire.ok([job.summary(full=False) for job in reversed(caller.state.jobs.all())])


def history(
    caller: Caller, since: float | None, task: str | None, identity: str | None, limit: int
) -> str:
    """Finished jobs from the durable store (app_agent/_jobs/history.py), newest first."""
    return _history.answer(
        caller.state.jobs.history, since=since, task=task, identity=identity, limit=limit
    )


def cancel(caller: Caller, job_id: str) -> str:
    """Ask a running job to stop (cooperatively, or by cancelling its coroutine); a
    profile's id ends that profile (whoever may profile may end one)."""
    if job_id.startswith(PROFILE_ID_PREFIX):
        from app_agent._introspection.handlers import cancel_profile

        return cancel_profile(caller, job_id)
    job = caller.state.jobs.get(job_id)
    if job is None:
        return _no_such_job(job_id)
    if not caller.identity.may_run(job.task.name):
        return caller.may_not_run(job.task.name, f"cancel job {job.id}")
    requested = job.cancel()
    caller.state.log.info("job.cancel_requested", job=job.id, running=requested, **caller.who)
    return wire.ok({"job": job.id, "requested": requested, "state": job.state})


# -- a call, step by step ------------------------------------------------------------------


def _prepare(
    caller: Caller, name: str, args_json: str, kwargs_json: str, options_json: str
) -> _Call:
    """Validate a call: the task, a new job, bound arguments and options. _Refused (its
    reply ready) when the call cannot go on; a job that exists has then ended."""
    log = caller.state.log
    who = caller.who
    task = caller.state.registry.get(name)
    # A task the identity may not run is refused whether or not it exists: its answer
    # must not tell which tasks the agent has. Checked before a byte of the arguments
    # is decoded: what a caller may not run costs the app nothing more.
    if not caller.identity.may_run(task.name if task is not None else name):
        raise _Refused(caller.may_not_run(task.name if task is not None else name, asked=name))
    if task is None:
        log.info("call.no_such_task", task=name, outcome="no_such_task", **who)
        raise _Refused(_no_such_task(caller, name))
    limit = caller.max_argument_bytes
    if len(args_json) + len(kwargs_json) > limit or len(options_json) > _MAX_OPTIONS:
        size = len(args_json) + len(kwargs_json) + len(options_json)
        log.info("call.bad_arguments", task=task.name, outcome="usage", bytes=size, **who)
        raise _Refused(
            wire.error(
                ErrorKind.USAGE,
                arguments_too_big(size, limit),
                Reason.ARGUMENTS_TOO_BIG,
                size=size,
                limit=limit,
            )
        )
    try:
        args, kwargs = _decode_arguments(args_json, kwargs_json)
        options = _decode_options(options_json)
        bound_args, bound_kwargs, named = task.bind(args, kwargs)
    except (ValueError, TypeError) as exc:
        log.info("call.bad_arguments", task=task.name, outcome="usage", error=str(exc), **who)
        reply = wire.error(
            ErrorKind.USAGE,
            f"{task.name}: {exc}",
            Reason.BAD_ARGUMENTS,
            signature=task.display_signature,
        )
        raise _Refused(reply) from None
    shown = caller.name if caller.identity.name is None else f"{caller.identity} ({caller.name})"
    traceparent = _traced(options["traceparent"], log)
    job = caller.state.jobs.create(task, shown)
    job.traceparent = traceparent
    try:
        # Argument names and sizes always; values only where the task opted in (they
        # may carry secrets).
        job.audit = {
            **who,
            "argument_sizes": {k: len(wire.dumps(v)) for k, v in named.items()} if named else {},
        }
        if task.log_values:
            job.audit["values"] = named
        if task.record_args:
            job.arguments = named
    except Exception as exc:  # noqa: BLE001  (whatever it is, the job must not stay running)
        raise _Refused(_failed_to_start(caller, job, exc)) from None
    return _Call(task, job, bound_args, bound_kwargs, options)


def _start(caller: Caller, prepared: _Call, started: float, inline: bool = False) -> None:
    """Start the call's job; _Refused with the error reply when it could not start (its
    lock stays held, no thread): the job has then ended, failed."""
    job = prepared.job
    try:
        caller.state.jobs.start(
            job, prepared.args, prepared.kwargs, prepared.options["lock_wait"], inline=inline
        )
    except Busy as busy:
        _log_finished(caller, job, started)
        holder = busy.holder.job if busy.holder is not None else None
        reply = wire.error(
            ErrorKind.BUSY, str(busy), Reason.LOCK_HELD, job=job.id, lock=busy.name, holder=holder
        )
        raise _Refused(reply) from None
    except NoThread as exc:  # the app is out of threads: busy, try again later
        _log_finished(caller, job, started)
        raise _Refused(wire.error(ErrorKind.BUSY, str(exc), Reason.NO_THREAD, job=job.id)) from None
    except Exception as exc:  # noqa: BLE001  (a lock backend down)
        _log_finished(caller, job, started)
        raise _Refused(_start_failed(job, exc)) from None


def _failed_to_start(caller: Caller, job: Job, exc: Exception) -> str:
    caller.state.jobs.fail(job, exc)
    caller.state.log.warning(
        "call.failed_to_start", task=job.task.name, job=job.id, error=repr(exc)[:500]
    )
    return _start_failed(job, exc)


def _log_finished(caller: Caller, job: Job, started: float) -> None:
    fields = {"task": job.task.name, "job": job.id, "outcome": job.state, **job.audit}
    fields["duration_ms"] = _ms(started)
    if job.state == SUCCEEDED:
        caller.state.log.info("call.finished", **fields)
        return
    if job.error:
        kind = job.error.get("type") or job.error.get("kind")
        fields["error"] = f"{kind}: {job.error.get('message', '')}"
    caller.state.log.warning("call.finished", **fields)


def _no_such_task(caller: Caller, name: str) -> str:
    registered = caller.state.registry.all()
    if not registered:
        message = f"no task named {name!r}: this app registers no tasks; {REGISTER_TASKS}"
        return wire.error(ErrorKind.NO_SUCH_TASK, message, Reason.NO_TASKS, task=name)
    # Suggest a task whose last name part is close to the one asked for (a typo).
    wanted = name.rsplit(".", 1)[-1]
    scored = [
        (difflib.SequenceMatcher(None, wanted, t.name.rsplit(".", 1)[-1]).ratio(), t.name)
        for t in registered
        if caller.identity.may_run(t.name)
    ]
    best = max(scored, default=(0.0, ""))
    suggestion = best[1] if best[0] >= 0.75 else None
    hint = f" (did you mean {suggestion}?)" if suggestion else ""
    fields = {"suggestion": suggestion} if suggestion else {}
    return wire.error(
        ErrorKind.NO_SUCH_TASK,
        f"no task named {name!r}{hint}",
        Reason.NO_SUCH_TASK,
        task=name,
        **fields,
    )


def _snapshot_reply(snapshot: dict[str, Any]) -> str:
    """A job snapshot as a reply envelope. Its events and outcome are JSON data already
    (see Job): re-converting would walk every event again, at five times the cost."""
    return wire.ok_plain(snapshot)


def _start_failed(job: Job, exc: Exception) -> str:
    return wire.error(
        ErrorKind.TASK_FAILED,
        f"{job.task.name} could not start: {type(exc).__name__}: {exc}",
        Reason.COULD_NOT_START,
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
    reason = error.pop("reason", None)
    if kind is ErrorKind.TASK_FAILED:
        what = "was cancelled" if job.state == CANCELLED else f"raised {error.get('type')}"
        message = f"{job.task.name} {what}: {message}" if message else f"{job.task.name} {what}"
        reason = reason or (Reason.CANCELLED if job.state == CANCELLED else Reason.RAISED)
    elif job.state == TIMED_OUT:
        reason = Reason.TASK_TIMEOUT
    return wire.error(kind, message, Reason(reason) if reason else None, job=job.id, **error)


def _no_such_job(job_id: str) -> str:
    message = f"no job {job_id!r} (it may have left the history)"
    return wire.error(ErrorKind.USAGE, message, Reason.NO_SUCH_JOB, job=job_id)


def _decode_options(options_json: str) -> dict[str, Any]:
    options: dict[str, Any] = dict(CALL_OPTIONS)
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
    options.update(lock_wait=float(lock_wait), wait=min(float(wait), MAX_WAIT))
    options["detach"] = bool(given.get("detach", False))
    options["traceparent"] = given.get("traceparent")  # checked by _prepare: never refused
    return options


def _traced(value: Any, log: Any) -> str | None:
    """The call's traceparent when it is a valid one; a bad one is dropped (debug log)."""
    if value is None:
        return None
    traceparent = tracecontext.parse(value)
    if traceparent is None:
        log.debug("call.traceparent_ignored", value=repr(value)[:100])
    return traceparent


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
