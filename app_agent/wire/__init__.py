"""The contract both sides share, one concept a module, standard library only.

- :mod:`~app_agent.wire.addresses`: node addresses (``unix:``, ``tcp://``, ``tls://``)
- :mod:`~app_agent.wire.codec`: the JSON codec, the conversion rule, reply envelopes
- :mod:`~app_agent.wire.errors`: error kinds and their exit codes, and the reasons within them
- :mod:`~app_agent.wire.protocol`: every RPC method, its grant, arguments and reply; shared limits
- :mod:`~app_agent.wire.handshake`: the handshake's lines, version, limits and deadline
- :mod:`~app_agent.wire.cookies`: the cookie, its files, the proofs and record keys
- :mod:`~app_agent.wire.records`: authenticated records after a cookie handshake
- :mod:`~app_agent.wire.environment`: every ``RPCCTL_*`` variable's name
- :mod:`~app_agent.wire.processes`: whether a process exists
- :mod:`~app_agent.wire.words`: how counts read in messages
- :mod:`~app_agent.wire.tracecontext`: the W3C ``traceparent`` a call may carry

The names most code needs are re-exported here; the codec's (json) load on first use, and
``cookies`` and ``records`` (hashing) when imported: the ``rpcctl ping`` path loads this
package and must stay cheap.
"""

from __future__ import annotations

from app_agent.wire import environment
from app_agent.wire.addresses import Address, AddressError, parse_node
from app_agent.wire.errors import ErrorKind, Reason
from app_agent.wire.handshake import (
    HANDSHAKE_TIMEOUT,
    MAX_HELLO_BYTES,
    PROTOCOL_VERSION,
    LineReader,
    decode_line,
    encode_line,
    is_identity_name,
)
from app_agent.wire.processes import pid_alive

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from app_agent.wire.codec import dumps, error, is_plain, loads, ok, ok_plain, to_plain

_CODEC = frozenset({"dumps", "error", "is_plain", "loads", "ok", "ok_plain", "to_plain"})

NODE_ENV = environment.NODE
RUNNER_ENV = environment.RUNNER_PID

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "MAX_HELLO_BYTES",
    "NODE_ENV",
    "PROTOCOL_VERSION",
    "RUNNER_ENV",
    "Address",
    "AddressError",
    "ErrorKind",
    "LineReader",
    "Reason",
    "decode_line",
    "dumps",
    "encode_line",
    "environment",
    "error",
    "is_identity_name",
    "is_plain",
    "loads",
    "ok",
    "ok_plain",
    "parse_node",
    "pid_alive",
    "to_plain",
]


def __getattr__(name: str) -> object:
    if name in _CODEC:
        from app_agent.wire import codec

        return getattr(codec, name)
    msg = f"module 'app_agent.wire' has no attribute {name!r}"
    raise AttributeError(msg)
