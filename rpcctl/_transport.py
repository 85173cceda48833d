"""Opening a connection to an agent and doing the handshake: standard library only.

``rpcctl ping`` uses nothing but this module, so it never imports RPyC.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Any

from app_agent import wire
from app_agent.wire import Address, ErrorKind
from rpcctl.exceptions import BY_KIND, CallTimeout, Unreachable, UsageError


def open_socket(address: Address, timeout: float) -> socket.socket:
    """Connect to *address*; Unreachable or CallTimeout when that fails."""
    deadline = time.monotonic() + timeout
    if address.is_unix:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address.path
    else:
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            msg = f"{address}: cannot resolve {address.host!r} ({exc.strerror})"
            raise Unreachable(msg) from None
        family, _type, _proto, _name, target = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except TimeoutError:
        sock.close()
        msg = f"{address}: no answer within {timeout:g}s"
        raise CallTimeout(msg) from None
    except FileNotFoundError:
        sock.close()
        msg = f"{address}: no agent is running (the socket does not exist)"
        raise Unreachable(msg) from None
    except ConnectionRefusedError:
        sock.close()
        what = "the socket is stale" if address.is_unix else "connection refused"
        msg = f"{address}: no agent is running ({what})"
        raise Unreachable(msg) from None
    except OSError as exc:
        sock.close()
        msg = f"{address}: cannot connect ({exc.strerror or exc})"
        raise Unreachable(msg) from None
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    return sock


def handshake(sock: socket.socket, address: Address, op: str) -> dict[str, Any]:
    """Send the hello for *op* and read the agent's answer; raise the matching error."""
    try:
        sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "op": op}))
        line = _read_line(sock)
    except TimeoutError:
        msg = f"{address}: the agent did not answer the handshake in time"
        raise CallTimeout(msg) from None
    except OSError as exc:
        msg = f"{address}: the connection failed during the handshake ({exc.strerror or exc})"
        raise Unreachable(msg) from None
    if not line:
        msg = f"{address}: the agent closed the connection during the handshake"
        raise Unreachable(msg)
    try:
        answer = wire.decode_line(line)
    except ValueError:
        msg = f"{address}: this is not an rpcctl agent (unexpected handshake answer)"
        raise UsageError(msg) from None
    if not answer.get("ok"):
        kind = _kind(answer.get("kind"))
        message = str(answer.get("message", "refused"))
        raise BY_KIND[kind](f"{address}: {message}")
    return answer


def ping(address: Address, timeout: float) -> None:
    """One ping through the handshake alone: no RPyC on either side."""
    sock = open_socket(address, timeout)
    try:
        handshake(sock, address, "ping")
    finally:
        sock.close()


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < wire.MAX_HELLO_BYTES:
        chunk = sock.recv(wire.MAX_HELLO_BYTES - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _kind(value: Any) -> ErrorKind:
    with contextlib.suppress(ValueError):
        return ErrorKind(value)
    return ErrorKind.UNREACHABLE
