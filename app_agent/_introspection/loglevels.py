"""Log levels at run time: show or set stdlib logging levels, for a while if asked.

``rpcctl log-level LEVEL --logger NAME --for 10m`` sets a level and the agent's one
log-level thread puts the previous one back by itself, whether or not the client is still
there.
structlog set up on top of stdlib logging follows.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple


class LevelError(ValueError):
    """A logging level or duration the agent cannot use."""


def parse_level(value: Any) -> int:
    """A level name (any case, the app's custom names included) or number, as a number."""
    if type(value) is int and value >= 0:
        return value
    if type(value) is str:
        text = value.strip()
        if text.isdigit():
            return int(text)
        known = logging.getLevelNamesMapping()
        if text.upper() in known:
            return known[text.upper()]
    names = ", ".join(
        n for n, _ in sorted(logging.getLevelNamesMapping().items(), key=lambda kv: kv[1])
    )
    msg = f"unknown logging level {value!r}: expected one of {names}, or a number"
    raise LevelError(msg)


def level_name(level: int) -> str:
    return logging.getLevelName(level)


MAX_PENDING = 1000
"""Loggers that may wait for their level to come back at once (each costs a little memory,
and an agent must not be made to keep an unbounded list)."""


class _Revert(NamedTuple):
    """A temporary level: the one to come back to, when (monotonic, and wall clock for
    showing), and whom to tell."""

    original: int
    due: float
    at: float
    on_revert: Callable[[str, str, str], None] | None


class LogLevels:
    """Reads and sets stdlib logging levels; temporary levels come back by themselves.

    A level set for a while is reverted by the agent's one log-level thread (started with
    the first temporary level, ended with the last), so the old level returns even when the
    client that set it has gone. Setting a logger again replaces its revert but keeps the
    level it will return to: the one before the first temporary change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, _Revert] = {}
        self._thread: threading.Thread | None = None

    @staticmethod
    def _logger(name: str) -> logging.Logger:
        return logging.getLogger(None if name == "root" else name)

    def describe(self, name: str) -> dict[str, Any]:
        """One logger: own level, effective level, whether it exists, a pending revert."""
        logger: logging.Logger | None
        if name == "root":
            logger = logging.getLogger()
        else:
            found = logging.Logger.manager.loggerDict.get(name)
            logger = found if isinstance(found, logging.Logger) else None
        level = logger.level if logger is not None else logging.NOTSET
        effective = (
            logger.getEffectiveLevel() if logger is not None else _effective_level_of_new(name)
        )
        entry: dict[str, Any] = {
            "logger": name,
            "level": level_name(level),
            "effective": level_name(effective),
            "exists": logger is not None,
        }
        pending = self._pending.get(name)
        if pending is not None:
            entry["reverts_to"] = level_name(pending.original)
            entry["reverts_at"] = round(pending.at, 3)
        return entry

    def show(self, name: str | None = None) -> dict[str, Any]:
        """*name*'s levels; without a name, the root and every logger with a level of its own."""
        with self._lock:
            if name is not None:
                return {"loggers": [self.describe(name)]}
            own = sorted(
                n
                for n, lg in list(logging.Logger.manager.loggerDict.items())
                if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET
            )
            names = ["root", *own]
            names += sorted(n for n in self._pending if n not in names)
            return {"loggers": [self.describe(n) for n in names]}

    def set(
        self,
        name: str,
        level: int,
        duration: float | None = None,
        on_revert: Callable[[str, str, str], None] | None = None,
    ) -> dict[str, Any]:
        """Set *name*'s level, for *duration* seconds when given; what it was and will be."""
        if duration is not None and (not math.isfinite(duration) or duration <= 0):
            msg = f"the duration must be a positive number of seconds, got {duration!r}"
            raise LevelError(msg)
        logger = self._logger(name)
        with self._lock:
            new = duration is not None and name not in self._pending
            if new and len(self._pending) >= MAX_PENDING:
                msg = (
                    f"{MAX_PENDING} loggers already have a temporary level: set this one "
                    "without --for, or wait for some to come back"
                )
                raise LevelError(msg)
            previous = logger.level
            pending = self._pending.pop(name, None)
            logger.setLevel(level)
            result: dict[str, Any] = {
                "logger": name,
                "level": level_name(level),
                "previous": level_name(previous),
            }
            if duration is not None:
                original = pending.original if pending is not None else previous
                revert_at = time.time() + duration
                due = time.monotonic() + duration
                self._pending[name] = _Revert(original, due, revert_at, on_revert)
                self._wake_thread()
                result.update(reverts_to=level_name(original), reverts_at=round(revert_at, 3))
            result["effective"] = level_name(logger.getEffectiveLevel())
            return result

    def _wake_thread(self) -> None:
        """Start the reverting thread, or wake it for a new first revert (lock held)."""
        if self._thread is None or not self._thread.is_alive():  # none, or lost in a fork
            self._thread = threading.Thread(
                target=self._run_reverts, name="rpcctl-log-level", daemon=True
            )
            self._thread.start()
        else:
            self._wake.notify()

    def _run_reverts(self) -> None:
        """Put levels back as they come due; end when none is left to put back."""
        while True:
            with self._lock:
                while True:
                    if self._thread is not threading.current_thread():
                        return  # replaced (after a fork, say)
                    if not self._pending:
                        self._thread = None  # under the lock: the next set() starts another
                        return
                    name, due = min(
                        ((n, r.due) for n, r in self._pending.items()), key=lambda item: item[1]
                    )
                    wait = due - time.monotonic()
                    if wait <= 0:
                        break
                    self._wake.wait(wait)
                revert = self._pending.pop(name)
                logger = self._logger(name)
                temporary = logger.level
                logger.setLevel(revert.original)
            if revert.on_revert is not None:
                revert.on_revert(name, level_name(temporary), level_name(revert.original))

    def reset(self) -> None:
        """Put every temporarily changed level back now (for tests); the thread ends."""
        with self._lock:
            pending, self._pending = self._pending, {}
            for name, revert in pending.items():
                self._logger(name).setLevel(revert.original)
            self._wake.notify()


def _effective_level_of_new(name: str) -> int:
    """The level a logger that does not exist yet would get from its nearest ancestor."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = logging.Logger.manager.loggerDict.get(".".join(parts[:i]))
        if isinstance(parent, logging.Logger):
            return parent.getEffectiveLevel()
    return logging.getLogger().getEffectiveLevel()


log_levels = LogLevels()


def logger_name(value: Any) -> str:
    """The canonical name: ``root`` for the root logger (``""``, ``root`` or none given)."""
    if value is None:
        return "root"
    if type(value) is not str:  # checked first: comparing a netref would call the client
        msg = "a logger name must be text"
        raise LevelError(msg)
    return "root" if value in ("", "root") else value
