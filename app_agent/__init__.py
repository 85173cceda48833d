"""app_agent: embed in an application so rpcctl can ping it and run its release tasks.

Importing this package is cheap: the registry loads on first use of ``task``, RPyC and
structlog when :func:`start` runs, so the operator's side can share :mod:`app_agent.wire`
without paying for them.
"""

from __future__ import annotations

from collections.abc import Iterable

from app_agent._version import __version__
from app_agent.exceptions import (
    AddressInUse,
    AgentAlreadyRunning,
    AgentError,
    ConfigurationError,
    TaskRegistrationError,
)

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO, Unpack

    from app_agent._agent import Agent
    from app_agent._introspection.health import health_check
    from app_agent._jobs.capture import cancelled, progress
    from app_agent._registry import Task, reset_registry, task
    from app_agent._server.drain import on_drain, on_resume
    from app_agent._server.readiness import set_ready
    from app_agent.config import StartOptions

__all__ = [
    "AddressInUse",
    "Agent",
    "AgentAlreadyRunning",
    "AgentError",
    "ConfigurationError",
    "Task",
    "TaskRegistrationError",
    "__version__",
    "cancelled",
    "configure_logging",
    "current",
    "health_check",
    "on_drain",
    "on_resume",
    "progress",
    "reset_registry",
    "set_ready",
    "start",
    "task",
]


def start(
    node: str | None = None, tasks: Iterable[str] = (), **options: Unpack[StartOptions]
) -> Agent:
    """Start this process's agent and return it once it listens.

    *node* defaults to ``RPCCTL_NODE``; *tasks* names modules whose ``@task`` functions
    register. The options are described at :class:`app_agent.config.StartOptions`.
    """
    from app_agent import _agent

    return _agent.start(node, tasks, **options)


def current() -> Agent | None:
    """The running agent of this process, if any."""
    from app_agent import _agent

    return _agent.current()


def configure_logging(
    json: bool | None = None, stream: TextIO | None = None, level: str | int | None = None
) -> None:
    """Configure structlog for an app without its own set-up: JSON unless on a terminal."""
    from app_agent import logs

    logs.configure_logging(json=json, stream=stream, level=level)


def __getattr__(name: str) -> object:
    # Loaded on first use, so that importing app_agent.wire stays cheap for the CLI.
    if name == "Agent":
        from app_agent._agent import Agent

        return Agent
    if name in ("task", "Task", "reset_registry"):
        from app_agent import _registry

        return getattr(_registry, name)
    if name in ("progress", "cancelled"):
        from app_agent._jobs import capture as _capture

        return getattr(_capture, name)
    if name == "health_check":
        from app_agent._introspection.health import health_check

        return health_check
    if name in ("on_drain", "on_resume"):
        from app_agent._server import drain as _drain

        return getattr(_drain, name)
    if name == "set_ready":
        from app_agent._server.readiness import set_ready

        return set_ready
    msg = f"module 'app_agent' has no attribute {name!r}"
    raise AttributeError(msg)
