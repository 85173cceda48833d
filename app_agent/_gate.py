"""The agent's side of the handshake: who may talk to the agent, checked before any RPyC frame.

In order: the peer's uid (UNIX sockets, SO_PEERCRED), TLS (tls:// addresses), the hello
line (protocol version, operation, client nonce), then, when a cookie is configured, the
challenge-response that proves the cookie both ways. Every refusal is logged with its reason.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from typing import Any

from app_agent import _auth, wire
from app_agent import _readiness as readiness
from app_agent.wire import ErrorKind


class Refused(Exception):
    """The peer failed a check; ``reason`` is logged, ``kind``/``message`` are sent to it."""

    def __init__(self, reason: str, kind: ErrorKind | None = None, message: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.message = message or reason


class Gate:
    """Admits or refuses one connection at a time (called on the connection's thread)."""

    def __init__(
        self,
        log: Any,
        allowed_uids: frozenset[int],
        cookie: bytes | None,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.log = log
        self.allowed_uids = allowed_uids
        self.cookie = cookie
        self.tls = tls

    def admit(self, sock: socket.socket) -> tuple[socket.socket, dict[str, str]] | None:
        """The socket to serve RPyC on and the caller's credentials, or None when done.

        None means the connection is finished: refused (and logged), or a ping answered.
        """
        wrapped: list[socket.socket] = []
        admitted = self._checks(sock, wrapped)
        if admitted is None:
            # A TLS wrapper made here and not handed on is closed here; the caller closes
            # the plain socket it gave us.
            for tls_sock in wrapped:
                with contextlib.suppress(OSError):
                    tls_sock.close()
        return admitted

    def _checks(
        self, sock: socket.socket, wrapped: list[socket.socket]
    ) -> tuple[socket.socket, dict[str, str]] | None:
        peer = describe_peer(sock)
        log = self.log.bind(peer=peer)
        methods: list[str] = []
        try:
            sock.settimeout(wire.HANDSHAKE_TIMEOUT)
            if sock.family == socket.AF_UNIX:
                self._check_uid(sock)
                methods.append("peer-uid")
            if self.tls is not None:
                sock = self._wrap_tls(sock)
                wrapped.append(sock)
                methods.append("tls-client-cert" if self._mutual_tls else "tls")
            hello = wire.decode_line(read_line(sock))
            op = self._check_hello(hello)
            fields: dict[str, Any] = {"ok": True}
            if self.cookie is not None:
                fields["proof"] = self._challenge(sock, hello["nonce"], op)
                methods.append("cookie")
            if op == "ping":
                fields["pong"] = True
                fields["ready"] = readiness.ready
            _send(sock, fields)
        except Refused as refused:
            log.warning("connection.refused", reason=refused.reason, auth="+".join(methods))
            if refused.kind is not None:
                _send(sock, {"ok": False, "kind": str(refused.kind), "message": refused.message})
            return None
        except TimeoutError:
            log.warning("connection.refused", reason="handshake timed out")
            return None
        except ValueError as exc:  # not a handshake line at all
            log.warning("connection.refused", reason=str(exc))
            return None
        except ssl.SSLError as exc:
            log.warning("connection.refused", reason=f"TLS handshake failed: {exc.reason}")
            return None
        auth = "+".join(methods) or "none"
        log.info("connection.accepted", op=op, auth=auth)
        if op == "ping":
            return None
        sock.settimeout(None)
        return sock, {"peer": peer, "auth": auth}

    @property
    def _mutual_tls(self) -> bool:
        return self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED

    def _check_uid(self, sock: socket.socket) -> None:
        _pid, uid, _gid = peer_credentials(sock)
        if uid not in self.allowed_uids:
            reason = f"peer uid {uid} is not allowed (allowed: {sorted(self.allowed_uids)})"
            raise Refused(reason, ErrorKind.AUTH)

    def _wrap_tls(self, sock: socket.socket) -> socket.socket:
        assert self.tls is not None
        return self.tls.wrap_socket(sock, server_side=True)

    def _check_hello(self, hello: dict[str, Any]) -> str:
        version = hello.get("rpcctl")
        if version != wire.PROTOCOL_VERSION:
            reason = (
                f"protocol version mismatch: the client speaks {version!r}, "
                f"this agent speaks {wire.PROTOCOL_VERSION}"
            )
            raise Refused(reason, ErrorKind.USAGE)
        op = hello.get("op")
        if op not in ("rpc", "ping"):
            raise Refused(f"unknown operation {op!r}", ErrorKind.USAGE)
        if not _auth.is_nonce(hello.get("nonce")):
            raise Refused("the hello carries no valid nonce", ErrorKind.USAGE)
        return str(op)

    def _challenge(self, sock: socket.socket, client_nonce: str, op: str) -> str:
        """Challenge the client; its proof checked, return the agent's own proof."""
        assert self.cookie is not None
        agent_nonce = _auth.new_nonce()
        _send(sock, {"challenge": agent_nonce})
        answer = wire.decode_line(read_line(sock))
        given = answer.get("proof")
        if given is None:
            raise Refused(
                "no cookie: the client did not send a proof",
                ErrorKind.AUTH,
                "this agent requires a cookie",
            )
        expected = _auth.proof(self.cookie, "client", client_nonce, agent_nonce, op)
        if not _auth.proof_matches(expected, given):
            raise Refused(
                "wrong cookie: the client's proof does not match",
                ErrorKind.AUTH,
                "wrong cookie",
            )
        return _auth.proof(self.cookie, "agent", client_nonce, agent_nonce, op)


def _send(sock: socket.socket, fields: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, **fields}))


def describe_peer(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        pid, uid, _gid = peer_credentials(sock)
        return f"uid={uid} pid={pid}"
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "unknown"
    return f"{host}:{port}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def read_line(sock: socket.socket) -> bytes:
    """One handshake line. The client waits for our answer before it sends anything more,
    so reading past the newline cannot swallow the start of an RPyC frame."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(wire.MAX_HELLO_BYTES - len(data))
        if not chunk:
            msg = "connection closed during the handshake"
            raise ValueError(msg)
        data += chunk
        if len(data) >= wire.MAX_HELLO_BYTES and not data.endswith(b"\n"):
            msg = "handshake line too long"
            raise ValueError(msg)
    if data.count(b"\n") != 1:
        msg = "data after the handshake line"
        raise ValueError(msg)
    return data


def server_tls_context(cert: str, key: str | None, client_ca: str | None) -> ssl.SSLContext:
    """TLS for the agent: its certificate, and client certificates required with *client_ca*."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context
