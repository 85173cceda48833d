"""The values on the wire: the JSON codec, the conversion rule, and reply envelopes."""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any, Final

from app_agent.wire.errors import ErrorKind, Reason


def to_plain(value: Any) -> Any:
    """Turn *value* into JSON-compatible data, by the rule documented in docs/wire.md.

    Containers are converted recursively; tuples and sets become lists (sets sorted when
    their items allow it); dataclasses become dicts; dates and times become ISO 8601
    strings; Decimal, UUID and paths become strings; enums become their value; bytes become
    text when they are UTF-8, else ``{"base64": ...}``; non-finite floats become the strings
    "NaN", "Infinity" and "-Infinity"; dict keys become strings. Anything else becomes its
    ``repr()``, so a result always reaches the caller.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {_plain_key(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return _to_plain_other(value)


def _to_plain_other(value: Any) -> Any:
    # Imported here: the ping path loads this module and never converts results.
    import base64
    import dataclasses
    import datetime
    import decimal
    import pathlib
    import uuid

    if isinstance(value, set | frozenset):
        items = [to_plain(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID | pathlib.PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    return repr(value)


def _plain_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    plain = to_plain(key)
    return plain if isinstance(plain, str) else json.dumps(plain)


def dumps(value: Any) -> str:
    """Encode *value* as compact JSON after :func:`to_plain`; never fails."""
    return json.dumps(to_plain(value), separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    return json.loads(text)


def is_plain(value: Any) -> bool:
    """True when *value* is already JSON data (what a caller may send as arguments)."""
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


_OK_NONE: Final = '{"ok":true,"result":null}'


def ok(result: Any) -> str:
    """A successful reply envelope, as text."""
    if result is None:
        return _OK_NONE
    return dumps({"ok": True, "result": result})


_encode_plain: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def ok_plain(result: Any) -> str:
    """A successful reply envelope for a *result* that is JSON data already (converted once,
    where it was made): encoded as it is, without walking it through :func:`to_plain`
    again. Anything the encoder refuses falls back to :func:`ok`."""
    if result is None:
        return _OK_NONE
    try:
        return '{"ok":true,"result":' + _encode_plain(result) + "}"
    except (TypeError, ValueError):
        return ok(result)


def error(kind: ErrorKind, message: str, reason: Reason | None = None, **details: Any) -> str:
    """A failed reply envelope, as text: the error's *kind* (its exit code), its *reason*
    (the code the operator's side makes its words and hints from) with the *details* that
    go with it, and *message*, the agent's own sentence for it."""
    fields = {"kind": str(kind), "message": message, **details}
    if reason is not None:
        fields["reason"] = str(reason)
    return dumps({"ok": False, "error": fields})
