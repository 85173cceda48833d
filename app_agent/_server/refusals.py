"""Refusals: why a connection was refused, and logs that record refusals (and other events a
peer can cause at will) at a bounded rate: a flood of bad connections or requests must not
fill the app's log or cost its CPU."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from app_agent.wire import ErrorKind, Reason


class Refused(Exception):
    """The peer failed a check; ``reason`` is logged, ``kind``/``code``/``message`` are sent
    to it (``code``: the wire.Reason the client makes its words from)."""

    def __init__(
        self,
        reason: str,
        kind: ErrorKind | None = None,
        message: str = "",
        code: Reason | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.message = message or reason
        self.code = code


class RateLimitedLog:
    """Logs the first *burst* occurrences of *event* in each *window* seconds one by one, and
    counts the rest by reason: one ``EVENT_summary`` line (``count_field``: how many,
    ``reasons``: the count per reason) when the window has ended (at the next occurrence,
    or when the owner flushes it: the gate on its loop, the agent when it stops).

    Safe to call from any thread: the gate's, and every connection's.
    """

    def __init__(
        self,
        log: Any,
        event: str,
        count_field: str,
        burst: int = 5,
        window: float = 10.0,
    ) -> None:
        self.log = log
        self.event = event
        self.count_field = count_field
        self.burst = burst
        self.window = window
        self._lock = threading.Lock()
        self._window_end = 0.0
        self._logged = 0
        self._suppressed: collections.Counter[str] = collections.Counter()

    def note(self, reason: str, **fields: Any) -> None:
        """One occurrence: logged (with *reason* and *fields*), or counted under *reason*."""
        now = time.monotonic()
        with self._lock:
            if now >= self._window_end:
                self._flush()
                self._window_end = now + self.window
                self._logged = 0
            logged = self._logged < self.burst
            if logged:
                self._logged += 1
            else:
                self._suppressed[reason] += 1
        if logged:
            self.log.warning(self.event, reason=reason, **fields)

    def due(self) -> float | None:
        """When the summary of suppressed occurrences is due, if there is one."""
        return self._window_end if self._suppressed else None

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if not self._suppressed:
            return
        self.log.warning(
            f"{self.event}_summary",
            **{self.count_field: sum(self._suppressed.values())},
            reasons=dict(self._suppressed.most_common(10)),
            window_s=self.window,
        )
        self._suppressed.clear()


class RefusalLog(RateLimitedLog):
    """The gate's refusals: ``connection.refused``, then ``connection.refused_summary``."""

    def __init__(self, log: Any, burst: int = 5, window: float = 10.0) -> None:
        super().__init__(log, "connection.refused", "refused", burst, window)

    def refused(self, peer: str, reason: str, auth: str, identity: str | None = None) -> None:
        fields = {"identity": identity} if identity else {}
        self.note(reason, peer=peer, auth=auth, **fields)


def short(value: object) -> str:
    """A peer-supplied value, as much of it as a log line should carry."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
