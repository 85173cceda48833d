"""Refusals at the gate: why a connection was refused, and the log that records them at a
bounded rate (a flood of bad connections must not fill the app's log or cost its CPU)."""

from __future__ import annotations

import collections
import time
from typing import Any

from app_agent.wire import ErrorKind


class Refused(Exception):
    """The peer failed a check; ``reason`` is logged, ``kind``/``message`` are sent to it."""

    def __init__(self, reason: str, kind: ErrorKind | None = None, message: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.message = message or reason


class RefusalLog:
    """Logs the first *burst* refusals of each *window* seconds, then counts the rest."""

    def __init__(self, log: Any, burst: int = 5, window: float = 10.0) -> None:
        self.log = log
        self.burst = burst
        self.window = window
        self._window_end = 0.0
        self._logged = 0
        self._suppressed: collections.Counter[str] = collections.Counter()

    def note(self, peer: str, reason: str, auth: str, identity: str | None = None) -> None:
        now = time.monotonic()
        if now >= self._window_end:
            self.flush()
            self._window_end = now + self.window
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            fields = {"identity": identity} if identity else {}
            self.log.warning("connection.refused", peer=peer, reason=reason, auth=auth, **fields)
        else:
            self._suppressed[reason] += 1

    def due(self) -> float | None:
        """When the summary of suppressed refusals is due, if there is one."""
        return self._window_end if self._suppressed else None

    def flush(self) -> None:
        if not self._suppressed:
            return
        self.log.warning(
            "connection.refused_summary",
            refused=sum(self._suppressed.values()),
            reasons=dict(self._suppressed.most_common(10)),
            window_s=self.window,
        )
        self._suppressed.clear()


def short(value: object) -> str:
    """A peer-supplied value, as much of it as a log line should carry."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
