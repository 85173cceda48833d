"""The RPC protocol, declared once: every method an agent serves, who may call it, what it
takes and what it answers, and the constants both sides share.

The agent's service is built from :data:`METHODS` (each ``exposed_<name>`` checks its
arguments and its grant from the entry before a handler runs: ``app_agent/_service.py``
says how to add a method), and the client sends its requests through the same entries, so
the two sides cannot drift apart: tests/test_protocol.py walks the table against both.
Arguments cross the wire as plain values (str, int, float, bool, None); task arguments,
results and every reply travel as JSON text (:mod:`.codec`).

Not on the ``rpcctl ping`` path: a ping is answered in the handshake (:mod:`.handshake`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final

# -- grants: what an identity of the access file may do (docs/security.md) ---------------------

NO_GRANT: Final = ""
"""Anyone admitted may call it (ping)."""
READ: Final = "read"
"""Read-only views: info, tasks, jobs and their output, stack, stats, health, profile, mem."""
STOP: Final = "stop"
"""Stopping or restarting the app."""
LOG_LEVEL: Final = "log_level"
"""Setting a logger's level (it changes what the app writes)."""
CONSOLE: Final = "console"
"""The remote console: arbitrary code, so never implied by ``*``."""
DRAIN: Final = "drain"
"""Draining the app (not ready, its on_drain hooks) and resuming it; not implied by ``read``."""
TASK: Final = "task"
"""Not a grant of the access file: the identity's task patterns decide, by the task's name
(call, run, cancel), which the handler checks once it knows the task."""
TASK_OR_READ: Final = "task_or_read"
"""A job's output: whoever may run its task, or holds ``read``."""
GRANTS: Final = (READ, STOP, LOG_LEVEL, CONSOLE, DRAIN)
"""The grants an access file may name, besides task patterns and ``*``."""
EVERYTHING: Final = "*"
"""Every grant and every task, but not the console."""

# -- job states ---------------------------------------------------------------------------------

RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
TIMED_OUT: Final = "timed_out"
FINISHED: Final = frozenset({SUCCEEDED, FAILED, CANCELLED, TIMED_OUT})

# -- limits and defaults both sides rely on -----------------------------------------------------

DEFAULT_TIMEOUT: Final = 5.0
"""Seconds a client gives connecting, the handshake and the short requests."""
SUMMARY_ONLY: Final = 1 << 62
"""An ``events`` cursor past any event: the job's state and outcome without its output."""
MAX_NESTING: Final = 200
"""Levels of lists and objects task arguments and results may nest."""
MAX_WAIT: Final = 30.0
"""Seconds one long poll (``events``, ``console_push``, ``console_poll``) may wait."""
DEFAULT_MAX_ARGUMENT_BYTES: Final = 16 << 20
"""Bytes of arguments (as JSON text) one request may carry, unless the app sets
``max_argument_bytes``."""
MAX_PROFILE_SECONDS: Final = 3600.0
MAX_PROFILE_RATE: Final = 1000.0
MAX_MEM_SECONDS: Final = 3600.0
MAX_MEM_TOP: Final = 1000
MEM_GROUPS: Final = ("line", "file", "traceback")
MAX_HEALTH_SECONDS: Final = 3600.0
MAX_DRAIN_WAIT: Final = 3600.0
"""Seconds ``drain`` may wait for running jobs to end."""
CALL_OPTIONS: Final[Mapping[str, Any]] = {
    "lock_wait": 0.0,
    "detach": False,
    "wait": 1.0,
    "traceparent": None,
}
"""The options a ``call``/``run`` may carry (as JSON text), with their defaults.
``traceparent``: the caller's W3C trace context (:mod:`.tracecontext`); the job's span
continues that trace. A value that is not one is dropped by the agent, never refused."""
PROFILE_ID_PREFIX: Final = "profile-"
"""A running profile's id (``cancel`` ends it, like a job)."""
HISTORY_DEFAULT_LIMIT: Final = 100
HISTORY_MAX_LIMIT: Final = 10_000
"""Records one ``history`` request answers with, by default and at most."""
MAX_TASK_GLOB: Final = 300
"""Characters of a ``history --task`` glob."""


def task_glob_problem(pattern: str) -> str | None:
    """What is wrong with *pattern*, a ``history --task`` glob (``*`` any characters, ``?``
    one, anything else itself, ``[`` included), or None: both sides check it, so that a
    fleet is not asked what each node would refuse."""
    if not pattern.strip():
        return "the task pattern is empty"
    if not pattern.isprintable() or " " in pattern:
        return (
            f"the task pattern {pattern!r} has spaces or control characters (task names have none)"
        )
    if len(pattern) > MAX_TASK_GLOB:
        return f"the task pattern is {len(pattern):,} characters long (at most {MAX_TASK_GLOB})"
    return None


# -- the declaration ----------------------------------------------------------------------------

_TYPES: Final[Mapping[str, tuple[type, ...]]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "none": (type(None),),
}


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()
"""The default of an argument that has none."""


@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument of a method: its name, the plain types it may have (``"str"``,
    ``"int"``, ``"float"`` (an int will do), ``"bool"``, ``"none"``, joined by ``|``), its
    default (none: required), and the grant needed to give it a value other than the
    default (setting a log level, say)."""

    name: str
    types: str
    default: Any = REQUIRED
    grant: str = NO_GRANT
    action: str = ""
    """What giving it a value does, in the words of a refusal (``set log levels``)."""
    accepted: frozenset[type] = dataclasses.field(init=False, repr=False, compare=False)
    """The Python types *types* names, worked out once: every call checks them."""

    def __post_init__(self) -> None:
        accepted = frozenset(t for name in self.types.split("|") for t in _TYPES[name])
        object.__setattr__(self, "accepted", accepted)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def accepts(self, value: Any) -> bool:
        """Whether *value* has one of the declared types: checked with ``type()``, so a
        netref (a proxy of an object of the caller's) is never any of them, and ``True`` is
        no number."""
        return type(value) in self.accepted


@dataclasses.dataclass(frozen=True)
class Method:
    """One RPC method: its name on the wire, the grant it needs, its arguments, the shape
    of its reply, and how a client budgets its deadline."""

    name: str
    concept: str
    """The handler that serves it: ``core``, ``jobs``, ``introspection`` or ``console``."""
    grant: str
    args: tuple[Arg, ...]
    reply: str
    """The reply's result, in words: ``{key, ...}`` for an object, ``[{key, ...}]`` for a
    list of them; the keys named are always there."""
    streams: bool = False
    """A long poll: answers what is there after waiting up to its ``wait`` argument."""
    waits: str = ""
    """The argument whose seconds a client adds to its own timeout for this request (the
    method may legitimately take that long)."""
    doc: str = ""
    action: str = ""
    """What it does, in the words of a refusal: ``{identity} may not {action} (that needs
    the {grant} grant)``; ``call {name}`` when not given."""
    names: frozenset[str] = dataclasses.field(init=False, repr=False, compare=False)
    """The arguments' names, worked out once."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", frozenset(a.name for a in self.args))

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The raw arguments of a call as ``{name: value}``, defaults filled in, each value
        checked against its declared types before anything else touches it; ValueError
        naming the method's signature when they do not fit. (Every call runs this on both
        sides: kept plain and quick, a few µs.)"""
        if len(args) > len(self.args) or (kwargs and not self.names.issuperset(kwargs)):
            raise ValueError(self._usage())
        bound: dict[str, Any] = {}
        given = len(args)
        for i, arg in enumerate(self.args):
            if i < given:
                if kwargs and arg.name in kwargs:
                    raise ValueError(self._usage())
                value = args[i]
            elif arg.name in kwargs:
                value = kwargs[arg.name]
            elif arg.default is REQUIRED:
                raise ValueError(self._usage())
            else:
                bound[arg.name] = arg.default
                continue
            if type(value) not in arg.accepted:
                raise ValueError(self._usage())
            bound[arg.name] = value
        return bound

    def grants_needed(self, bound: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The grants this call needs, each with the action a refusal names: the method's
        own, then those of the arguments given a value of their own (only the named grants;
        TASK and TASK_OR_READ are the handler's)."""
        needed = [(self.grant, self.action or f"call {self.name}")] if self.grant in GRANTS else []
        for arg in self.args:
            # The value was type-checked by bind(): comparing it touches no netref.
            if arg.grant and bound.get(arg.name, arg.default) != arg.default:
                needed.append((arg.grant, arg.action or f"give {self.name} a {arg.name}"))
        return needed

    def signature(self) -> str:
        """``name(arg: types = default, ...)``, as usage errors show it."""
        return f"{self.name}({', '.join(self._parameters())})"

    def _parameters(self) -> list[str]:
        return [
            f"{a.name}: {a.types}" + ("" if a.required else f" = {a.default!r}") for a in self.args
        ]

    def _usage(self) -> str:
        return f"{self.name}() takes {', '.join(self._parameters()) or 'no arguments'}"


def _method(name: str, concept: str, grant: str, *args: Arg, **fields: Any) -> Method:
    return Method(name, concept, grant, args, **fields)


_JOB = "{id, task, caller, state, started_at, duration_s, result?, error?}"
_SNAPSHOT = "{job, task, state, events, cursor, dropped, ...the job's summary}"
_CONSOLE = "use the console"
_CALL_ARGS = (
    Arg("name", "str"),
    Arg("args_json", "str", "[]"),
    Arg("kwargs_json", "str", "{}"),
    Arg("options_json", "str", "{}"),
)

METHODS: Final[Mapping[str, Method]] = {
    m.name: m
    for m in (
        # -- core: is it there, what is it, stop it -----------------------------------------
        _method("ping", "core", NO_GRANT, reply='"pong"', doc="Over a kept connection."),
        _method(
            "info",
            "core",
            READ,
            reply="{app, version, pid, node, started_at, uptime_s, versions, python, jobs, "
            "ready, drained, event_loop}",
            action="read info",
        ),
        _method(
            "tasks",
            "core",
            READ,
            reply="[{name, alias, signature, doc, is_async}]",
            doc="The tasks this identity may run.",
            action="list tasks",
        ),
        _method(
            "stop",
            "core",
            STOP,
            Arg("restart", "bool", False),
            reply="{pid, via}",
            action="stop the app",
        ),
        _method(
            "drain",
            "core",
            DRAIN,
            Arg("wait_jobs", "float", 0.0),
            reply="{drained, already, hooks, failed, running, waited_s}",
            waits="wait_jobs",
            doc="Not ready, the on_drain hooks, then wait up to wait_jobs s for running jobs.",
            action="drain the app",
        ),
        _method(
            "resume",
            "core",
            DRAIN,
            reply="{resumed, was, hooks, failed}",
            doc="The on_resume hooks, then ready again (still drained when one fails).",
            action="resume the app",
        ),
        # -- jobs: run a task, follow it, list and cancel jobs ------------------------------
        _method(
            "call",
            "jobs",
            TASK,
            *_CALL_ARGS,
            reply="the task's result (JSON data)",
            doc="Run a task and answer with its result, in one round trip.",
        ),
        _method(
            "run",
            "jobs",
            TASK,
            *_CALL_ARGS,
            reply=_SNAPSHOT,
            doc="Start a task as a job; its first events (none when detached).",
        ),
        _method(
            "events",
            "jobs",
            TASK_OR_READ,
            Arg("job_id", "str"),
            Arg("cursor", "int", 0),
            Arg("wait", "float", 1.0),
            reply=_SNAPSHOT,
            streams=True,
            waits="wait",
        ),
        _method(
            "jobs",
            "jobs",
            READ,
            reply=f"[{_JOB}]",
            doc="Recent and running, newest first.",
            action="list jobs",
        ),
        _method(
            "cancel",
            "jobs",
            TASK,
            Arg("job_id", "str"),
            reply="{job, requested, state}",
            doc="A job (its task's grant) or a profile (read).",
        ),
        _method(
            "history",
            "jobs",
            READ,
            Arg("since", "float|none", None),
            Arg("task", "str|none", None),
            Arg("identity", "str|none", None),
            Arg("limit", "int", HISTORY_DEFAULT_LIMIT),
            action="read the job history",
            reply="[{job, task, caller, identity, app, node, host, pid, started, duration, "
            "state, exit_code, error, argument_sizes, arguments, trace_id}]",
            doc="Finished jobs from the durable store, newest first: started at or after "
            "since (seconds since the epoch), tasks matching the glob task, by identity.",
        ),
        # -- introspection: look inside the live app ----------------------------------------
        _method(
            "stack",
            "introspection",
            READ,
            reply="{threads, asyncio, ...}",
            action="read the stack",
        ),
        _method(
            "stats",
            "introspection",
            READ,
            Arg("objects", "int", 0),
            reply="{pid, ...}",
            action="read stats",
        ),
        _method(
            "health",
            "introspection",
            READ,
            Arg("timeout", "float", 10.0),
            reply="{healthy, checks}",
            waits="timeout",
            action="run the health checks",
        ),
        _method(
            "profile",
            "introspection",
            READ,
            Arg("seconds", "float"),
            Arg("rate", "float", 100.0),
            Arg("idle", "bool", False),
            reply="{id, samples, frames, stacks, ended, ...}",
            waits="seconds",
            action="profile the app",
        ),
        _method(
            "mem",
            "introspection",
            READ,
            Arg("seconds", "float", 10.0),
            Arg("top", "int", 10),
            Arg("group_by", "str", "line"),
            reply="{top, seconds, overhead, tracing, grew, group_by, ...}",
            waits="seconds",
            action="diagnose memory",
        ),
        _method(
            "log_level",
            "introspection",
            READ,
            Arg("logger", "str|none", None),
            Arg("level", "str|int|none", None, grant=LOG_LEVEL, action="set log levels"),
            Arg("for_s", "float|none", None),
            reply="{logger, level, previous, ...} or the levels shown",
            action="read log levels",
        ),
        # -- the remote console (off unless the app turns it on) ----------------------------
        _method(
            "console_open",
            "console",
            CONSOLE,
            reply="{session, app, pid, node, ...}",
            action=_CONSOLE,
        ),
        _method(
            "console_push",
            "console",
            CONSOLE,
            Arg("source", "str"),
            Arg("wait", "float", 1.0),
            reply="{statement, events, cursor, dropped, state}",
            streams=True,
            waits="wait",
            action=_CONSOLE,
        ),
        _method(
            "console_poll",
            "console",
            CONSOLE,
            Arg("cursor", "int"),
            Arg("wait", "float", 1.0),
            reply="{statement, events, cursor, dropped, state}",
            streams=True,
            waits="wait",
            action=_CONSOLE,
        ),
        _method("console_interrupt", "console", CONSOLE, reply="{interrupted}", action=_CONSOLE),
        _method("console_close", "console", CONSOLE, reply="{statements, failed}", action=_CONSOLE),
    )
}
"""Every method an agent serves, by name, each once."""
