"""The handshake's framing: one JSON line each way before any RPyC frame.

The client's hello names the protocol version and what it wants ("rpc": go on with RPyC;
"ping": answer and close); the agent answers with its version and either ok or an error
kind. See docs/wire.md and docs/security.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final


PROTOCOL_VERSION: Final = 3
"""Bumped whenever the handshake or the service's methods change incompatibly (2: the agent's
proof covers its answer, and cookie connections without TLS carry authenticated records;
3: the hello may name an identity, bound into both proofs and the record keys, and the
agent's answer reports the app's name and version, covered by its proof)."""

MAX_IDENTITY_NAME: Final = 64
_IDENTITY_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)

MAX_HELLO_BYTES: Final = 4096
"""Upper bound of one handshake line; anything longer is refused before it is parsed."""

HANDSHAKE_TIMEOUT: Final = 2.0
"""Seconds a peer gets to complete the whole handshake (TLS included) before the agent drops
it: one deadline per connection, however slowly its bytes arrive."""


def is_identity_name(value: object) -> bool:
    """Whether *value* can name an identity: 1 to 64 letters, digits, ``_``, ``.`` or ``-``,
    starting with a letter or digit (so never a newline the proofs would trip on)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_IDENTITY_NAME
        and value[0].isascii()
        and value[0].isalnum()
        and set(value) <= _IDENTITY_CHARS
    )


def encode_line(message: Mapping[str, Any]) -> bytes:
    line = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
    if len(line) > MAX_HELLO_BYTES:
        msg = "handshake line too long"
        raise ValueError(msg)
    return line


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one handshake line; ValueError (with a reason fit for the audit log) when it is
    not a flat JSON object carrying ``rpcctl``.

    The line comes from a peer that has not authenticated yet, so every failure is a
    ValueError: deep nesting (RecursionError in the parser) and nested values are refused,
    and each value's type is checked where it is used.
    """
    try:
        message = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        msg = "not an rpcctl handshake (not UTF-8)"
        raise ValueError(msg) from None
    except (json.JSONDecodeError, RecursionError):
        msg = "not an rpcctl handshake (not JSON)"
        raise ValueError(msg) from None
    if not isinstance(message, dict) or "rpcctl" not in message:
        msg = "not an rpcctl handshake"
        raise ValueError(msg)
    if any(isinstance(v, dict | list) for v in message.values()):
        msg = "malformed handshake: nested values"
        raise ValueError(msg)
    return message


class LineReader:
    """Collects one handshake line from chunks as they arrive: the agent feeds it from a
    non-blocking socket, the client from a blocking one."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    @property
    def room(self) -> int:
        """How many more bytes a line may take."""
        return MAX_HELLO_BYTES - len(self.buffer)

    def feed(self, chunk: bytes) -> bytes | None:
        """Add *chunk*: the whole line (newline included) once it is complete, else None.

        ValueError when the line grows past the limit, or bytes follow it: each side waits
        for the other's answer before it sends more.
        """
        self.buffer += chunk
        line, newline, rest = self.buffer.partition(b"\n")
        if newline:
            if rest:
                msg = "data after the handshake line"
                raise ValueError(msg)
            self.buffer = b""
            return line + newline
        if len(self.buffer) >= MAX_HELLO_BYTES:
            msg = "handshake line too long"
            raise ValueError(msg)
        return None
