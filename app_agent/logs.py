"""Where the agent's structlog events go.

The host application owns logging. If it configured structlog, the agent's events follow
that configuration. If it did not, the agent writes to stderr (never stdout, which belongs
to the app): JSON lines when stderr is not a terminal, readable lines when it is.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog

from app_agent.wire import environment

LEVEL_ENV = environment.LOG_LEVEL


def _level(level: str | int | None) -> int:
    name = level if level is not None else os.environ.get(LEVEL_ENV, "info")
    if isinstance(name, int):
        return name
    return logging.getLevelNamesMapping().get(name.upper(), logging.INFO)


def processors(json: bool) -> list[Any]:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=_colour_allowed(sys.stderr))
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        renderer,
    ]


def _colour_allowed(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def configure_logging(
    json: bool | None = None, stream: TextIO | None = None, level: str | int | None = None
) -> None:
    """Configure structlog process-wide for an app that has no logging set-up of its own.

    *json* defaults to JSON when *stream* (stderr by default) is not a terminal; *level*
    defaults to ``RPCCTL_LOG_LEVEL`` or info.
    """
    from app_agent._jobs.capture import current_stderr

    # By default, whatever sys.stderr is at each write: inside a job that is the job's own
    # stderr, so a task's structlog events reach its caller.
    out: Any = stream if stream is not None else current_stderr
    structlog.configure(
        processors=processors(json if json is not None else not out.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(_level(level)),
        # One write per line (PrintLogger writes the newline separately, and unbuffered
        # stderr shared with a runner or another process then interleaves mid-line).
        logger_factory=structlog.WriteLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    """The agent's logger: the host's structlog set-up when it has one, stderr otherwise."""
    if structlog.is_configured():
        return structlog.get_logger("app_agent", **initial)
    return structlog.wrap_logger(
        structlog.WriteLogger(sys.stderr),
        processors=processors(not sys.stderr.isatty()),
        wrapper_class=structlog.make_filtering_bound_logger(_level(None)),
        **initial,
    )
