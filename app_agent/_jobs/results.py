"""A job's result and error as they are kept and sent: converted to JSON data by the
documented rule, measured (size and nesting, iteratively), bounded."""

from __future__ import annotations

from typing import Any

from app_agent import wire
from app_agent.wire.protocol import MAX_NESTING

MAX_RESULT_BYTES = 1 << 20
"""A finished job's result larger than this (as JSON) is not kept in the history: it goes
to the callers waiting for it when the job ends, then only a note stays."""
MAX_ERROR_TEXT = 65_536
"""Characters kept of a failure's message and of its traceback (the traceback's end)."""


def measure(value: Any, limit: int) -> tuple[int, int]:
    """(size, depth) of JSON data: about its encoded length, counted up to just past
    *limit*, and how deeply its lists and dicts nest. Iterative, so any depth is safe."""
    size = 0
    depth = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, dict):
            depth = max(depth, level)
            size += 2 + 2 * len(item)
            for key, sub in item.items():
                size += len(key) + 2 if isinstance(key, str) else 8
                stack.append((sub, level + 1))
        elif isinstance(item, list | tuple):
            depth = max(depth, level)
            size += 2 + len(item)
            stack.extend((sub, level + 1) for sub in item)
        else:
            size += 5 if item is None or isinstance(item, bool) else len(repr(item))
        if size > limit:
            return size, depth
    return size, depth


def plain(task: str, result: Any) -> tuple[Any, int]:
    """The result as JSON data, by the documented rule, with its size. A structure that
    cannot be converted (one that contains itself) becomes its repr; one nested deeper
    than MAX_NESTING cannot be sent, and fails the job."""
    if result is None or isinstance(result, bool | int | float):
        return wire.to_plain(result), 8
    if isinstance(result, str):
        return result, len(result) + 2
    try:
        plain = wire.to_plain(result)
    except (RecursionError, ValueError):
        try:
            plain = repr(result)
        except RecursionError:
            plain = None
    size, depth = measure(plain, MAX_RESULT_BYTES)
    if plain is None or depth > MAX_NESTING:
        msg = f"{task} returned data nested more than {MAX_NESTING} levels deep: it cannot be sent"
        raise ValueError(msg)
    if size > MAX_RESULT_BYTES:
        size, _ = measure(plain, 1 << 62)  # the whole size, for the note that it is not kept
    return plain, size


def bounded_error(error: dict[str, Any]) -> dict[str, Any]:
    """*error* with its message and traceback cut to MAX_ERROR_TEXT characters."""
    bounded = dict(error)
    message = bounded.get("message")
    if isinstance(message, str) and len(message) > MAX_ERROR_TEXT:
        bounded["message"] = message[:MAX_ERROR_TEXT] + " [...]"
    tb = bounded.get("traceback")
    if isinstance(tb, str) and len(tb) > MAX_ERROR_TEXT:
        bounded["traceback"] = "[...]\n" + tb[-MAX_ERROR_TEXT:]
    return bounded
