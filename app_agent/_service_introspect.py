"""The introspection methods of the service: stack, stats, health, profile, mem, log levels.

Each is thin: it checks the grant, calls its module (loaded on first use, so an idle agent
carries none of them) and answers with plain data.
"""

from __future__ import annotations

from typing import Any

from app_agent import wire
from app_agent._access import LOG_LEVEL, READ
from app_agent._service_base import ServiceBase
from app_agent.wire import ErrorKind


class IntrospectionMethods(ServiceBase):
    """stack, stats, health, profile, mem, log-level: read-only views of the live app."""

    # -- introspection (app_agent/_introspect.py, _health.py, _profile.py, _mem.py) -------
    # Their modules load on first use: an agent nobody looks into does not carry them.

    def exposed_stack(self) -> str:
        """Every thread's stack and the asyncio tasks of the app's loop."""
        if (refused := self._forbidden(READ, "read the stack")) is not None:
            return refused
        from app_agent import _introspect

        self._audit("introspect.stack")
        return wire.ok(_introspect.stack(self._state.app, self._state.jobs.loop))

    def exposed_stats(self, objects: Any = 0) -> str:
        """Process figures; with *objects* > 0, that many of the most common object types."""
        if (refused := self._forbidden(READ, "read stats")) is not None:
            return refused
        if type(objects) is not int or objects < 0:
            return wire.error(ErrorKind.USAGE, "stats() takes a number of object types")
        from app_agent import _introspect

        state = self._state
        self._audit("introspect.stats", objects=objects)
        return wire.ok(_introspect.stats(state.app, state.node, state.started_at, objects))

    def exposed_health(self, timeout: Any = 10.0) -> str:
        """Run the built-in and the app's health checks, each within *timeout* seconds."""
        if (refused := self._forbidden(READ, "run the health checks")) is not None:
            return refused
        if type(timeout) not in (int, float) or not 0 < timeout <= 3600:
            return wire.error(ErrorKind.USAGE, "health() takes seconds, at most 3600")
        from app_agent import _health

        report = _health.report(self._state.jobs, float(timeout))
        failed = [c["name"] for c in report["checks"] if not c["ok"]]
        self._audit("health.checked", healthy=report["healthy"], failed=failed)
        return wire.ok(report)

    def exposed_profile(self, seconds: Any, rate: Any = 100.0, idle: Any = False) -> str:
        """Sample every thread *rate* times a second for *seconds*; the counted stacks."""
        if (refused := self._forbidden(READ, "profile the app")) is not None:
            return refused
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

        def started(profile_id: str) -> None:
            self._audit("profile.started", id=profile_id, seconds=seconds, rate=rate, now=True)

        try:
            # It ends with its client: nobody would read an hour's profile of a client gone.
            result = _profile.profile(
                float(seconds), float(rate), idle, self._caller, self.peer_gone, started
            )
        except _profile.ProfilerBusy as exc:
            return wire.error(ErrorKind.BUSY, str(exc))
        self._audit(
            "profile.finished", id=result["id"], samples=result["samples"], ended=result["ended"]
        )
        return wire.ok(result)

    def exposed_mem(self, seconds: Any = 10.0, top: Any = 10, group_by: Any = "line") -> str:
        """Trace allocations for *seconds*: the *top* sites that grew, grouped by *group_by*
        (line, file, traceback). Ends early, tracing stopped, when the client hangs up."""
        if (refused := self._forbidden(READ, "diagnose memory")) is not None:
            return refused
        from app_agent import _mem

        if (
            type(seconds) not in (int, float)
            or type(top) is not int
            or type(group_by) is not str
            or not 0 < seconds <= _mem.MAX_SECONDS
            or not 1 <= top <= _mem.MAX_TOP
            or group_by not in _mem.GROUPS
        ):
            msg = (
                "mem() takes seconds (at most 3600), a number of sites (1 to 1000) and a "
                "grouping (line, file or traceback)"
            )
            return wire.error(ErrorKind.USAGE, msg)
        self._audit("mem.started", seconds=seconds, top=top, group_by=group_by, now=True)
        try:
            result = _mem.diagnose(float(seconds), top, group_by, self._caller, self.peer_gone.wait)
        except _mem.MemBusy as exc:
            return wire.error(ErrorKind.BUSY, str(exc))
        except _mem.TracingStopped as exc:
            return wire.error(ErrorKind.TASK_FAILED, str(exc))
        if result is None:  # nobody is left to answer; tracing has stopped
            self._audit("mem.abandoned", reason="the client went away", now=True)
            return wire.error(ErrorKind.UNREACHABLE, "the client went away")
        self._audit(
            "mem.finished",
            grew=result["grew"],
            size_diff=result["size_diff"],
            tracing_left_on=result["tracing"]["left_on"],
        )
        return wire.ok(result)

    def _cancel_profile(self, profile_id: str) -> str:
        """``cancel profile-N``: end a running profile (whoever may profile may end one)."""
        if (refused := self._forbidden(READ, f"cancel {profile_id}")) is not None:
            return refused
        from app_agent import _profile

        if not _profile.cancel(profile_id, self._caller):
            return wire.error(ErrorKind.USAGE, f"no profile {profile_id!r} is running")
        self._audit("profile.cancel_requested", id=profile_id, now=True)
        return wire.ok({"job": profile_id, "requested": True, "state": "running"})

    def exposed_log_level(self, logger: Any = None, level: Any = None, for_s: Any = None) -> str:
        """Show, or set (for *for_s* seconds when given), a stdlib logger's level."""
        # Types first, by type() alone: a netref compared or hashed would call back into
        # the client (before even its grant is checked).
        if (
            type(logger) not in (str, type(None))
            or type(level) not in (str, int, type(None))
            or type(for_s) not in (int, float, type(None))
        ):
            msg = "log_level() takes a logger name, a level (name or number) and seconds"
            return wire.error(ErrorKind.USAGE, msg)
        from app_agent import _loglevels

        try:
            name = _loglevels.logger_name(logger)
            if level is None:
                if (refused := self._forbidden(READ, "read log levels")) is not None:
                    return refused
                return wire.ok(_loglevels.log_levels.show(None if logger is None else name))
            # Setting a level changes what the app writes (DEBUG may log more than INFO).
            if (refused := self._forbidden(LOG_LEVEL, "set log levels")) is not None:
                return refused
            number = _loglevels.parse_level(level)
            changed = _loglevels.log_levels.set(name, number, for_s, self._log_reverted)
        except _loglevels.LevelError as exc:
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
