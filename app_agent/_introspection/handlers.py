"""Handlers of the introspection methods: stack, stats, health, profile, mem, log levels.

Each is thin: the service has bound its arguments and checked its grant; the handler checks
ranges, calls its module (loaded on first use, so an idle agent carries none of them) and
answers with plain data.
"""

from __future__ import annotations

from app_agent import wire
from app_agent._caller import Caller
from app_agent._server.access import READ
from app_agent.wire import ErrorKind, Reason
from app_agent.wire.protocol import (
    MAX_HEALTH_SECONDS,
    MAX_MEM_SECONDS,
    MAX_MEM_TOP,
    MAX_PROFILE_RATE,
    MAX_PROFILE_SECONDS,
    MEM_GROUPS,
)


def _usage(message: str) -> str:
    return wire.error(ErrorKind.USAGE, message, Reason.BAD_ARGUMENTS)


def stack(caller: Caller) -> str:
    """Every thread's stack and the asyncio tasks of the app's loop."""
    from app_agent._introspection import snapshot as _introspect

    caller.audit("introspect.stack")
    return wire.ok(_introspect.stack(caller.state.app, caller.state.jobs.loop))


def stats(caller: Caller, objects: int) -> str:
    """Process figures; with *objects* > 0, that many of the most common object types."""
    if objects < 0:
        return _usage("stats() takes a number of object types")
    from app_agent._introspection import snapshot as _introspect

    state = caller.state
    caller.audit("introspect.stats", objects=objects)
    return wire.ok(_introspect.stats(state.app, state.node, state.started_at, objects))


def health(caller: Caller, timeout: float) -> str:
    """Run the built-in and the app's health checks, each within *timeout* seconds."""
    if not 0 < timeout <= MAX_HEALTH_SECONDS:
        return _usage(f"health() takes seconds, at most {MAX_HEALTH_SECONDS:g}")
    from app_agent._introspection import health as _health

    report = _health.report(caller.state.jobs, float(timeout))
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    caller.audit("health.checked", healthy=report["healthy"], failed=failed)
    return wire.ok(report)


def profile(caller: Caller, seconds: float, rate: float, idle: bool) -> str:
    """Sample every thread *rate* times a second for *seconds*; the counted stacks."""
    if not 0 < seconds <= MAX_PROFILE_SECONDS or not 1 <= rate <= MAX_PROFILE_RATE:
        return _usage(
            f"profile() takes seconds (at most {MAX_PROFILE_SECONDS:g}), a rate in Hz "
            f"(1 to {MAX_PROFILE_RATE:g}) and a flag"
        )
    from app_agent._introspection import profile as _profile

    def started(profile_id: str) -> None:
        caller.audit("profile.started", id=profile_id, seconds=seconds, rate=rate, now=True)

    try:
        # It ends with its client: nobody would read an hour's profile of a client gone.
        result = _profile.profile(
            float(seconds), float(rate), idle, caller.name, caller.peer_gone, started
        )
    except _profile.ProfilerBusy as exc:
        return wire.error(ErrorKind.BUSY, str(exc), Reason.PROFILE_RUNNING, id=exc.running)
    caller.audit(
        "profile.finished", id=result["id"], samples=result["samples"], ended=result["ended"]
    )
    return wire.ok(result)


def mem(caller: Caller, seconds: float, top: int, group_by: str) -> str:
    """Trace allocations for *seconds*: the *top* sites that grew, grouped by *group_by*
    (line, file, traceback). Ends early, tracing stopped, when the client hangs up."""
    if (
        not 0 < seconds <= MAX_MEM_SECONDS
        or not 1 <= top <= MAX_MEM_TOP
        or group_by not in MEM_GROUPS
    ):
        return _usage(
            f"mem() takes seconds (at most {MAX_MEM_SECONDS:g}), a number of sites (1 to "
            f"{MAX_MEM_TOP}) and a grouping (line, file or traceback)"
        )
    from app_agent._introspection import mem as _mem

    caller.audit("mem.started", seconds=seconds, top=top, group_by=group_by, now=True)
    try:
        result = _mem.diagnose(float(seconds), top, group_by, caller.name, caller.peer_gone.wait)
    except _mem.MemBusy as exc:
        return wire.error(ErrorKind.BUSY, str(exc), Reason.MEM_RUNNING)
    except _mem.TracingStopped as exc:
        return wire.error(ErrorKind.TASK_FAILED, str(exc), Reason.TRACING_STOPPED)
    if result is None:  # nobody is left to answer; tracing has stopped
        caller.audit("mem.abandoned", reason="the client went away", now=True)
        return wire.error(ErrorKind.UNREACHABLE, "the client went away", Reason.CONNECTION_LOST)
    caller.audit(
        "mem.finished",
        grew=result["grew"],
        size_diff=result["size_diff"],
        tracing_left_on=result["tracing"]["left_on"],
    )
    return wire.ok(result)


def cancel_profile(caller: Caller, profile_id: str) -> str:
    """``cancel profile-N``: end a running profile (whoever may profile may end one)."""
    if (refused := caller.forbidden(READ, f"cancel {profile_id}")) is not None:
        return refused
    from app_agent._introspection import profile as _profile

    if not _profile.cancel(profile_id, caller.name):
        message = f"no profile {profile_id!r} is running"
        return wire.error(ErrorKind.USAGE, message, Reason.NO_PROFILE, id=profile_id)
    caller.audit("profile.cancel_requested", id=profile_id, now=True)
    return wire.ok({"job": profile_id, "requested": True, "state": "running"})


def log_level(
    caller: Caller, logger: str | None, level: str | int | None, for_s: float | None
) -> str:
    """Show, or set (for *for_s* seconds when given), a stdlib logger's level. Setting one
    needs the ``log_level`` grant (its table entry says so): it changes what the app writes."""
    from app_agent._introspection import loglevels as _loglevels

    try:
        name = _loglevels.logger_name(logger)
        if level is None:
            return wire.ok(_loglevels.log_levels.show(None if logger is None else name))
        number = _loglevels.parse_level(level)

        def reverted(logger: str, temporary: str, level: str) -> None:
            caller.state.log.info(
                "log_level.reverted", logger=logger, was=temporary, restored=level
            )

        changed = _loglevels.log_levels.set(name, number, for_s, reverted)
    except _loglevels.LevelError as exc:
        return wire.error(ErrorKind.USAGE, str(exc), Reason.BAD_LEVEL)
    caller.audit(
        "log_level.set",
        logger=changed["logger"],
        new_level=changed["level"],
        previous=changed["previous"],
        for_s=for_s,
    )
    return wire.ok(changed)
