"""Admission: who a connection in its handshake is, and what it must prove.

The gate (:mod:`app_agent._server.gate`) owns the sockets and the loop; this module owns
the decisions over each connection's handshake lines, without I/O: the hello (protocol
version, operation, nonce, the identity it names), which identity of the access file the
connection is (named and proven with its cookie, else its verified certificate or its
uid), the cookie's challenge and proof (both ways), and the answer an admitted connection
gets. A named identity that cannot be this connection is challenged with a decoy secret,
so it looks like a known one until its proof is refused (no identity oracle).
"""

from __future__ import annotations

import os
import selectors
import socket
from typing import Any

from app_agent import wire
from app_agent._server import readiness as readiness
from app_agent._server.access import UNRESTRICTED, Access, Identity
from app_agent._server.refusals import Refused, short
from app_agent.wire import ErrorKind, Reason, cookies


class Pending:
    """One connection in its handshake."""

    __slots__ = (
        "agent_nonce",
        "client_nonce",
        "deadline",
        "events",
        "identity",
        "methods",
        "named",
        "op",
        "peer",
        "phase",
        "reader",
        "secret",
        "sock",
        "subject",
        "uid",
        "unknown",
    )

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.sock = sock
        self.peer = peer
        self.deadline = deadline
        self.phase = "hello"  # "tls", "hello", "proof"
        self.reader = wire.LineReader()
        self.client_nonce = ""
        self.agent_nonce = ""
        self.op = ""
        self.methods: list[str] = []
        self.events = selectors.EVENT_READ
        self.uid: int | None = None  # the peer's, on a UNIX socket
        self.subject: frozenset[tuple[str, str]] = frozenset()  # its verified certificate's
        self.named = ""  # the identity the hello names ("" for none)
        self.identity: Identity | None = None  # who the connection is, once decided
        self.secret: bytes | None = None  # the cookie it must prove, when it must
        self.unknown = ""  # why a named identity cannot be this connection (logged only)


class Admission:
    """The handshake's rules for one agent: its *cookie* (without an access file), its
    *access* file's identities, and the *app* and *version* every answer reports."""

    def __init__(
        self, cookie: bytes | None, access: Access | None, app: str, version: str | None
    ) -> None:
        self.cookie = cookie
        self.access = access
        self.app = app
        self.version = version
        self._decoy = os.urandom(32)

    def hello(self, pending: Pending, line: bytes) -> dict[str, Any] | None:
        """Read the hello: protocol version, operation, nonce, the identity it names; decide
        what the connection must prove. The challenge to send, or None when nothing is left
        to prove (the connection is admitted)."""
        hello = wire.decode_line(line)
        version = hello.get("rpcctl")
        if version != wire.PROTOCOL_VERSION:
            reason = (
                f"protocol version mismatch: the client speaks {short(version)}, "
                f"this agent speaks {wire.PROTOCOL_VERSION}"
            )
            raise Refused(reason, ErrorKind.USAGE, code=Reason.VERSION_MISMATCH)
        op = hello.get("op")
        if op not in ("rpc", "ping"):
            raise Refused(
                f"unknown operation {short(op)}", ErrorKind.USAGE, code=Reason.BAD_ARGUMENTS
            )
        nonce = hello.get("nonce")
        if not cookies.is_nonce(nonce):
            raise Refused(
                "the hello carries no valid nonce", ErrorKind.USAGE, code=Reason.BAD_ARGUMENTS
            )
        named = hello.get("identity")
        if named is not None and not wire.is_identity_name(named):
            raise Refused(
                f"the hello names a malformed identity {short(named)}",
                ErrorKind.USAGE,
                code=Reason.IDENTITY,
            )
        pending.op = str(op)
        pending.client_nonce = str(nonce)
        pending.named = named or ""
        if self.access is None:
            if named is not None:
                raise Refused(
                    f"the client names identity {named!r}, but this agent has no access file",
                    ErrorKind.AUTH,
                    "this agent has no identities (no access file): drop --identity",
                    Reason.IDENTITY,
                )
            pending.identity = UNRESTRICTED
            pending.secret = self.cookie
        else:
            pending.secret = self._identify(pending)
        if pending.secret is None:
            return None
        pending.agent_nonce = cookies.new_nonce()
        return {"challenge": pending.agent_nonce}

    def _identify(self, pending: Pending) -> bytes | None:
        """Which identity of the access file *pending* is: decided now (its certificate, its
        uid, or a named identity those match), or once it proves the returned cookie."""
        assert self.access is not None
        if pending.named:
            identity = self.access.named(pending.named)
            if identity is not None and identity.cookie is not None:
                pending.identity = identity  # if it proves the cookie
                return identity.cookie
            if identity is not None and self._credentials_match(pending, identity):
                pending.identity = identity
                return None
            pending.unknown = (
                f"unknown identity {pending.named!r}"
                if identity is None
                else f"identity {pending.named!r} is not this connection's certificate or uid"
            )
            return self._decoy
        found = self.access.by_certificate(pending.subject) if pending.subject else []
        if len(found) > 1:
            names = ", ".join(str(i) for i in found)
            raise Refused(
                f"the client certificate matches several identities ({names})",
                ErrorKind.AUTH,
                "the client certificate matches several identities: name one with --identity",
                Reason.IDENTITY,
            )
        if found:
            pending.identity = found[0]
            return None
        by_uid = self.access.by_uid(pending.uid) if pending.uid is not None else None
        if by_uid is not None:
            pending.identity = by_uid
            return None
        raise Refused(
            "no identity: the client names none, and neither its certificate nor its uid is one",
            ErrorKind.AUTH,
            "this agent requires an identity: name one with --identity NAME (or RPCCTL_IDENTITY)",
            Reason.IDENTITY,
        )

    @staticmethod
    def _credentials_match(pending: Pending, identity: Identity) -> bool:
        if identity.uid is not None:
            return pending.uid == identity.uid
        return identity.matches_certificate(pending.subject)

    def proof(self, pending: Pending, line: bytes) -> None:
        """Check the client's proof of its cookie; Refused when it does not hold."""
        assert pending.secret is not None
        given = wire.decode_line(line).get("proof")
        if given is None:
            raise Refused(
                pending.unknown or "no cookie: the client did not send a proof",
                ErrorKind.AUTH,
                "this agent requires a cookie",
                Reason.NO_COOKIE,
            )
        expected = cookies.proof(
            pending.secret,
            "client",
            pending.client_nonce,
            pending.agent_nonce,
            pending.op,
            identity=pending.named,
        )
        # Compared even against the decoy, so an unknown identity costs what a known one does.
        matches = cookies.proof_matches(expected, given)
        if self.access is not None and (pending.unknown or not matches):
            reason = pending.unknown or (
                f"wrong cookie for identity {pending.named!r}: the client's proof does not match"
            )
            raise Refused(
                reason, ErrorKind.AUTH, "unknown identity or wrong cookie", Reason.WRONG_COOKIE
            )
        if not matches:
            raise Refused(
                "wrong cookie: the client's proof does not match",
                ErrorKind.AUTH,
                "wrong cookie",
                Reason.WRONG_COOKIE,
            )
        pending.methods.append("cookie")

    def answer(self, pending: Pending) -> dict[str, Any]:
        """The admitted connection's answer: who the agent is, whether the app is ready, the
        identity, and with a cookie the agent's proof over all of it."""
        fields: dict[str, Any] = {
            "ok": True,
            "pid": os.getpid(),
            "ready": readiness.ready,
            "app": self.app,
            "version": self.version,
        }
        if self.access is not None:
            fields["identity"] = str(pending.identity)
        if pending.op == "ping":
            fields["pong"] = True
        if pending.secret is not None:
            fields["proof"] = cookies.proof(
                pending.secret,
                "agent",
                pending.client_nonce,
                pending.agent_nonce,
                pending.op,
                cookies.answer_digest(fields),
                identity=pending.named,
            )
        return fields

    @staticmethod
    def record_keys(pending: Pending) -> tuple[bytes, bytes] | None:
        """(to the agent, to the client): the keys of the authenticated records a
        connection that proved a cookie speaks in, None without a cookie."""
        if pending.secret is None:
            return None
        return cookies.frame_keys(
            pending.secret,
            pending.client_nonce,
            pending.agent_nonce,
            pending.op,
            identity=pending.named,
        )
