"""``--where KEY=VALUE``: keep the nodes whose agents report matching values (the app's
version, its name, readiness, pid, identity from the handshake; anything at the top of
``info`` for one request more on the same connection)."""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from rpcctl.exceptions import ConfigError

if TYPE_CHECKING:
    from rpcctl.client import Client

HANDSHAKE_KEYS = frozenset({"version", "app", "ready", "pid", "identity"})
"""What the agent's handshake answer reports: filters on these cost no request."""


class Skipped(Exception):
    """A node that answered but does not match the filter: left out, not failed."""

    def __init__(self, reason: str, seen: dict[str, str]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seen = seen


class Where:
    """Filters a node must all match, each ``KEY=VALUE``: the node's value of KEY (from the
    handshake's answer, else the top level of ``info``) written as text (``true``/``false``,
    ``null``, numbers and strings as they are) must equal VALUE."""

    def __init__(self, filters: Iterable[tuple[str, str]] = ()) -> None:
        self.filters = list(filters)

    @classmethod
    def parse(cls, given: Where | Mapping[str, object] | Iterable[str] | None) -> Where:
        """A filter from ``["KEY=VALUE", ...]`` (the CLI's ``--where``), a mapping, or None;
        ConfigError (exit 2) for an item that is not KEY=VALUE."""
        if given is None:
            return cls()
        if isinstance(given, Where):
            return given
        if isinstance(given, Mapping):
            return cls((str(k), as_text(v)) for k, v in given.items())
        filters = []
        for item in given:
            key, eq, value = str(item).partition("=")
            if not eq or not key.strip():
                msg = f"--where expects KEY=VALUE (such as version=1.5.0), got {item!r}"
                raise ConfigError(msg)
            filters.append((key.strip(), value))
        return cls(filters)

    def __bool__(self) -> bool:
        return bool(self.filters)

    def __str__(self) -> str:
        return " ".join(f"--where {k}={v}" for k, v in self.filters)

    @property
    def needs_info(self) -> bool:
        """Whether a key is not in the handshake's answer, so ``info`` must be asked."""
        return any(key not in HANDSHAKE_KEYS for key, _ in self.filters)

    def check(self, values: Mapping[str, Any]) -> None:
        """Skipped (with why) unless *values* match every filter; a match is noted for
        :func:`fan_out`, which tells a node that matched from one never judged."""
        seen = {k: as_text(values[k]) if k in values else "" for k, _ in self.filters}
        for key, wanted in self.filters:
            if key not in values:
                raise Skipped(f"reports no {key} (--where {key}={wanted})", seen)
            if seen[key] != wanted:
                raise Skipped(f"{key} is {seen[key]!r} (--where {key}={wanted})", seen)
        judged.matched = True

    def check_client(self, conn: Client) -> None:
        """:meth:`check` on a connection: its handshake's answer, and ``info`` when a key
        needs it (one more round trip, on the same connection)."""
        if not self.filters:
            return
        values: dict[str, Any] = dict(conn.handshake)
        if self.needs_info:
            values = {**values, **conn.info()}
        self.check(values)

    def nothing_matched(self, seen: list[dict[str, str]]) -> str:
        """Why no node of those judged (their *seen* values) matched: the filters that match
        none of them, or, when each matches some, that none matches them all."""
        empty = []
        for key, wanted in self.filters:
            if not any(s.get(key) == wanted for s in seen):
                values = collections.Counter(s.get(key) or "(none)" for s in seen)
                shown = ", ".join(f"{v} on {n}" for v, n in values.most_common(5))
                empty.append(f"--where {key}={wanted} matches no node ({key}: {shown})")
        if empty:
            return "; ".join(empty)
        counts = "; ".join(
            f"{k}={v} on {sum(s.get(k) == v for s in seen)}" for k, v in self.filters
        )
        return f"no node matches {self} at once ({counts})"


def as_text(value: Any) -> str:
    """A reported value as ``--where`` compares it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


judged = threading.local()
"""Whether the node the current fleet thread works on matched its filter."""
