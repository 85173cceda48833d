"""Durations and moments as users type them: ``30s``, ``10m``, ``2d``; ``--since 1h`` or an
ISO 8601 time. The client parses what the operator typed; the agent checks what arrives.
"""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def _seconds(text: str, unit_required: bool) -> float | None:
    """The positive, finite duration *text* spells, or None."""
    match = _DURATION.match(text)
    if match is None or (unit_required and match[2] is None):
        return None
    seconds = float(match[1]) * _UNIT_SECONDS[match[2] or "s"]
    return seconds if 0 < seconds < float("inf") else None


def parse_duration(text: str) -> float:
    """``90``, ``30s``, ``10m``, ``1.5h``, ``500ms``, ``2d``, ``1w`` as seconds (a bare number is
    seconds); ValueError naming the accepted forms otherwise."""
    seconds = _seconds(text, unit_required=False)
    if seconds is None:
        msg = f"bad duration {text!r}: expected a positive number with a unit, e.g. 30s, 10m, 1h"
        raise ValueError(msg)
    return seconds


def parse_since(text: str, now: float | None = None) -> float:
    """The moment *text* names, in seconds since the epoch: how long before *now* (default:
    the current time), ``30m``, ``1h``, ``2d``, ``1w``, or an ISO 8601 time (``2026-11-26``,
    ``2026-11-26T11:00``, ``2026-11-26T11:00:00Z``, ``...+02:00``). A time without an offset is
    local time, as ``journalctl --since`` reads it; a bare number is refused (a year? an
    epoch?). ValueError naming the accepted forms otherwise."""
    ago = _seconds(text, unit_required=True)
    if ago is not None:
        import time

        return (time.time() if now is None else now) - ago
    if not _DURATION.match(text):
        import datetime

        try:
            return datetime.datetime.fromisoformat(text.strip()).timestamp()
        except (ValueError, OverflowError, OSError):
            pass  # reported below, with the forms that work
    msg = (
        f"bad time {text!r}: expected how long ago (30m, 1h, 2d, 1w) or an ISO 8601 time "
        "(2026-11-26, 2026-11-26T11:00, 2026-11-26T11:00:00Z)"
    )
    raise ValueError(msg)
