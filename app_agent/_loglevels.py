"""Log levels at run time: show or set stdlib logging levels, for a while if asked.

``rpcctl log-level LEVEL --logger NAME --for 10m`` sets a level and a timer thread in the
agent puts the previous one back by itself, whether or not the client is still there.
structlog set up on top of stdlib logging follows.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any


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


class LogLevels:
    """Reads and sets stdlib logging levels; temporary levels come back by themselves.

    A level set for a while is reverted by a timer thread in the agent, so the old level
    returns even when the client that set it has gone. Setting a logger again replaces its
    timer but keeps the level it will return to: the one before the first temporary change.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # logger name -> (level to return to, its timer, when)
        self._pending: dict[str, tuple[int, threading.Timer, float]] = {}

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
            entry["reverts_to"] = level_name(pending[0])
            entry["reverts_at"] = round(pending[2], 3)
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
        on_revert: Any = None,
    ) -> dict[str, Any]:
        """Set *name*'s level, for *duration* seconds when given; what it was and will be."""
        if duration is not None and (not math.isfinite(duration) or duration <= 0):
            msg = f"the duration must be a positive number of seconds, got {duration!r}"
            raise LevelError(msg)
        logger = self._logger(name)
        with self._lock:
            previous = logger.level
            pending = self._pending.pop(name, None)
            if pending is not None:
                pending[1].cancel()
            logger.setLevel(level)
            result: dict[str, Any] = {
                "logger": name,
                "level": level_name(level),
                "previous": level_name(previous),
            }
            if duration is not None:
                original = pending[0] if pending is not None else previous
                timer = threading.Timer(duration, self._revert, args=(name, on_revert))
                timer.name = "rpcctl-log-level"
                timer.daemon = True
                revert_at = time.time() + duration
                self._pending[name] = (original, timer, revert_at)
                timer.start()
                result.update(reverts_to=level_name(original), reverts_at=round(revert_at, 3))
            result["effective"] = level_name(logger.getEffectiveLevel())
            return result

    def _revert(self, name: str, on_revert: Any) -> None:
        with self._lock:
            pending = self._pending.get(name)
            if pending is None or pending[1] is not threading.current_thread():
                return  # replaced or made permanent since
            del self._pending[name]
            logger = self._logger(name)
            temporary = logger.level
            logger.setLevel(pending[0])
        if on_revert is not None:
            on_revert(name, level_name(temporary), level_name(pending[0]))

    def reset(self) -> None:
        """Put every temporarily changed level back now and cancel the timers (for tests)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            for name, (original, timer, _at) in pending.items():
                timer.cancel()
                self._logger(name).setLevel(original)


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
    if value is None or value in ("", "root"):
        return "root"
    if type(value) is not str:
        msg = "a logger name must be text"
        raise LevelError(msg)
    return value
