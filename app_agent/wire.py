"""The contract both sides share: node addresses, the JSON codec, error kinds, the handshake.

Only the standard library is imported here: the ``rpcctl ping`` path loads this module and
must stay cheap.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Mapping

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

PROTOCOL_VERSION: Final = 1
"""Bumped whenever the handshake or the service's methods change incompatibly."""

MAX_HELLO_BYTES: Final = 4096
"""Upper bound of one handshake line; anything longer is refused before it is parsed."""

HANDSHAKE_TIMEOUT: Final = 2.0
"""Seconds a peer gets to complete the handshake before the agent drops it."""

NODE_ENV: Final = "RPCCTL_NODE"
RUNNER_ENV: Final = "RPCCTL_RUNNER_PID"
"""Set by ``rpcctl start`` for the app and its hooks: the runner's pid."""


class ErrorKind(enum.StrEnum):
    """Why a request failed; each kind maps to one CLI exit code."""

    TASK_FAILED = "task_failed"
    USAGE = "usage"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    NO_SUCH_TASK = "no_such_task"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES: Final = {
    ErrorKind.TASK_FAILED: 1,
    ErrorKind.USAGE: 2,
    ErrorKind.UNREACHABLE: 3,
    ErrorKind.TIMEOUT: 4,
    ErrorKind.AUTH: 5,
    ErrorKind.NO_SUCH_TASK: 6,
    ErrorKind.BUSY: 7,
    ErrorKind.UNHEALTHY: 8,
}


class AddressError(ValueError):
    """A node address that is not ``unix:PATH``, ``tcp://HOST:PORT`` or ``tls://HOST:PORT``."""


class Address:
    """A parsed node address (immutable, comparable, hashable)."""

    __slots__ = ("host", "path", "port", "scheme")

    def __init__(self, scheme: str, path: str = "", host: str = "", port: int = 0) -> None:
        self.scheme = scheme  # "unix", "tcp" or "tls"
        self.path = path
        self.host = host
        self.port = port

    def _key(self) -> tuple[str, str, str, int]:
        return (self.scheme, self.path, self.host, self.port)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Address) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    @property
    def is_loopback(self) -> bool:
        if self.is_unix:
            return True
        if self.host == "localhost":
            return True
        import ipaddress

        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_NODE_FORMS: Final = "expected unix:PATH or tcp://HOST:PORT"


def parse_node(text: str, base_dir: str | os.PathLike[str] | None = None) -> Address:
    """Parse a node address; a relative UNIX path is taken relative to *base_dir* (or cwd)."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            msg = f"bad node address {text!r}: the UNIX socket path is empty ({_NODE_FORMS})"
            raise AddressError(msg)
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return Address("unix", path=os.path.abspath(path))
    for scheme in ("tcp", "tls"):
        prefix = f"{scheme}://"
        if text.startswith(prefix):
            return _parse_host_port(scheme, text, text[len(prefix) :])
    msg = f"bad node address {text!r}: {_NODE_FORMS}"
    raise AddressError(msg)


def _parse_host_port(scheme: str, text: str, rest: str) -> Address:
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        msg = f"bad node address {text!r}: {_NODE_FORMS}"
        raise AddressError(msg)
    return Address(scheme, host=host, port=int(port_text))


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists on this host (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


# --- the JSON codec ------------------------------------------------------------------------


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


# --- replies ---------------------------------------------------------------------------------


_OK_NONE: Final = '{"ok":true,"result":null}'


def ok(result: Any) -> str:
    """A successful reply envelope, as text."""
    if result is None:
        return _OK_NONE
    return dumps({"ok": True, "result": result})


def error(kind: ErrorKind, message: str, **details: Any) -> str:
    """A failed reply envelope, as text."""
    return dumps({"ok": False, "error": {"kind": str(kind), "message": message, **details}})


# --- the handshake -------------------------------------------------------------------------
# One JSON line each way before any RPyC frame: the client's hello names the protocol
# version and what it wants ("rpc": go on with RPyC; "ping": answer and close), the agent
# answers with its version and either ok or an error kind.


def encode_line(message: Mapping[str, Any]) -> bytes:
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
    if len(line) > MAX_HELLO_BYTES:
        msg = "handshake line too long"
        raise ValueError(msg)
    return line


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one handshake line; ValueError when it is not a JSON object."""
    try:
        message = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = "not an rpcctl handshake"
        raise ValueError(msg) from exc
    if not isinstance(message, dict) or "rpcctl" not in message:
        msg = "not an rpcctl handshake"
        raise ValueError(msg)
    return message
