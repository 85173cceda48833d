"""How both sides wait for something that is not there yet: one growing delay, capped, and
never slept past a deadline. Used wherever rpcctl retries (ping --wait, connects to a full
listen queue, lock waits, waiting for an app to stop or restart)."""

from __future__ import annotations

import time


class Backoff:
    """Delays from *first* growing by *factor* up to *cap*; :meth:`sleep` never passes the
    *deadline* (a ``time.monotonic()`` value, or None for none)."""

    __slots__ = ("cap", "deadline", "delay", "factor")

    def __init__(
        self, first: float, cap: float, deadline: float | None = None, factor: float = 1.5
    ) -> None:
        self.delay = first
        self.cap = cap
        self.deadline = deadline
        self.factor = factor

    def remaining(self) -> float:
        """Seconds left before the deadline (infinite without one), never negative."""
        if self.deadline is None:
            return float("inf")
        return max(self.deadline - time.monotonic(), 0.0)

    def sleep(self) -> bool:
        """Sleep the next delay, cut short at the deadline; False, at once, once it has
        passed (the caller gives up)."""
        if self.remaining() <= 0:
            return False
        time.sleep(self.pause())
        return True

    def pause(self) -> float:
        """The next delay, cut at the deadline, growing the one after it: for a caller that
        waits its own way (on an Event that may end the wait early)."""
        pause = min(self.delay, self.remaining())
        self.delay = min(self.delay * self.factor, self.cap)
        return pause
