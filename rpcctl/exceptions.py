"""Errors of the operator's side; each carries the CLI exit code it maps to."""

from __future__ import annotations

from app_agent.wire import ErrorKind

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, ClassVar, NoReturn


class RpcctlError(Exception):
    """Base class: a request could not be completed; ``exit_code`` says why.

    ``reason`` is the code of why, more precisely (an ``app_agent.wire.Reason`` value, or
    None), and ``data`` the fields that go with it (a path, a job id, a grant): what
    rpcctl's CLI makes its hints from, whatever the ``message`` says."""

    kind: ClassVar[ErrorKind]
    exit_code: ClassVar[int]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            cls.exit_code = cls.kind.exit_code

    def __init__(
        self, message: str, *, reason: str | None = None, data: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.data: dict[str, Any] = dict(data or {})

    def to_dict(self, message: str | None = None) -> dict[str, Any]:
        """The ``error`` of a JSON envelope: its data, kind, *message* (default: its own),
        exit code and reason, as ``--json`` prints it."""
        error: dict[str, Any] = {**self.data, "kind": str(self.kind)}
        error["message"] = self.message if message is None else message
        error["exit_code"] = self.exit_code
        if self.reason is not None:
            error["reason"] = self.reason
        return error


class TaskFailed(RpcctlError):
    """The task ran and raised; ``remote_traceback`` is the agent's traceback."""

    kind = ErrorKind.TASK_FAILED

    def __init__(
        self, message: str, remote_traceback: str = "", type: str = "", **fields: Any
    ) -> None:
        super().__init__(message, **fields)
        self.remote_traceback = remote_traceback
        self.type = type


class UsageError(RpcctlError):
    """The request itself is wrong: a bad expression, bad arguments or bad configuration."""

    kind = ErrorKind.USAGE


class BadExpression(UsageError):
    """An ``rpc`` expression that is not ``module.func`` or a call with literal arguments."""


class ConfigError(UsageError):
    """No node could be found, or a configuration file is invalid."""


class Unreachable(RpcctlError):
    """Nothing answers at the node's address."""

    kind = ErrorKind.UNREACHABLE


class NotReady(Unreachable):
    """The agent answers, but the app says it cannot serve yet (``ping --ready``)."""


class CallTimeout(RpcctlError):
    """The agent did not answer within the deadline; ``job`` names a job that goes on."""

    kind = ErrorKind.TIMEOUT

    def __init__(self, message: str, job: str | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.job = job


class AuthenticationFailed(RpcctlError):
    """The agent refused this caller, or the agent could not prove who it is."""

    kind = ErrorKind.AUTH


class NoSuchTask(RpcctlError):
    """The agent has no task by that name."""

    kind = ErrorKind.NO_SUCH_TASK


class Busy(RpcctlError):
    """The task's lock is held by another job."""

    kind = ErrorKind.BUSY


class Unhealthy(RpcctlError):
    """The app answered, but a health check failed; ``checks`` holds every check's outcome."""

    kind = ErrorKind.UNHEALTHY

    def __init__(
        self, message: str, checks: list[dict[str, Any]] | None = None, **fields: Any
    ) -> None:
        super().__init__(message, **fields)
        self.checks = checks or []


_ONE_PER_KIND = (
    TaskFailed,
    UsageError,
    Unreachable,
    CallTimeout,
    AuthenticationFailed,
    NoSuchTask,
    Busy,
    Unhealthy,
)
BY_KIND: dict[ErrorKind, type[RpcctlError]] = {cls.kind: cls for cls in _ONE_PER_KIND}


_NOT_DATA = frozenset({"kind", "message", "reason", "traceback", "type", "exit_code"})


def raise_error(error: Mapping[str, Any]) -> NoReturn:
    """Raise the exception of an error envelope's ``error`` part: its kind's class, with its
    reason and data."""
    try:
        kind = ErrorKind(str(error.get("kind")))
    except ValueError:
        kind = ErrorKind.TASK_FAILED
    message = str(error.get("message", "the agent reported an error"))
    reason = error.get("reason")
    fields: dict[str, Any] = {
        "reason": str(reason) if reason is not None else None,
        "data": {k: v for k, v in error.items() if k not in _NOT_DATA},
    }
    if kind is ErrorKind.TASK_FAILED:
        raise TaskFailed(
            message,
            remote_traceback=str(error.get("traceback", "")),
            type=str(error.get("type", "")),
            **fields,
        )
    raise BY_KIND[kind](message, **fields)
