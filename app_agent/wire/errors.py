"""Error kinds: why a request failed, and the one exit code each maps to."""

from __future__ import annotations

import enum

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final


class ErrorKind(enum.StrEnum):
    """Why a request failed; each kind maps to one CLI exit code."""

    TASK_FAILED = "task_failed"
    USAGE = "usage"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    NO_SUCH_TASK = "no_such_task"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES: Final = {
    ErrorKind.TASK_FAILED: 1,
    ErrorKind.USAGE: 2,
    ErrorKind.UNREACHABLE: 3,
    ErrorKind.TIMEOUT: 4,
    ErrorKind.AUTH: 5,
    ErrorKind.NO_SUCH_TASK: 6,
    ErrorKind.BUSY: 7,
    ErrorKind.UNHEALTHY: 8,
}


INTERRUPTED: Final = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it): the job goes on."""
