"""W3C trace context (https://www.w3.org/TR/trace-context/): the ``traceparent`` a call may
carry so that its job's span continues the caller's trace. Both sides check it the same way:
the client before sending what it found in ``TRACEPARENT``, the agent on what arrives (a bad
value is dropped there, never a reason to fail the call).
"""

from __future__ import annotations

import re

TRACEPARENT_ENV = "TRACEPARENT"
"""Where CI systems and otel-cli leave the current trace for the commands they run."""
OPTION = "traceparent"
"""The call option (``protocol.CALL_OPTIONS``) that carries it."""

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse(value: object) -> str | None:
    """*value* when it is a valid ``traceparent`` (version 00: exactly
    ``00-TRACEID-SPANID-FLAGS``, lowercase hex; a later version may add fields after those,
    as the specification allows), else None: the wrong type, shape or length, version
    ``ff``, or an all-zero trace or span id."""
    if type(value) is not str or len(value) > 512:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return value


def trace_id(traceparent: str) -> str:
    """The trace id (32 hex digits) of a valid *traceparent*."""
    return traceparent.split("-", 2)[1]
