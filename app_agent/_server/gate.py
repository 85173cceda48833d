"""The agent's front door: who may talk to the agent, checked before any RPyC frame.

One thread (the agent's own) runs a selector loop over the listening socket and every
connection still in its handshake. Accepting costs no thread, a doomed connection costs a
descriptor and a few bytes until its deadline, and pings are answered right here, so a
flood of bad connections cannot starve a liveness probe. Only an authenticated ``rpc``
connection is handed over to a thread of its own (see :mod:`app_agent._agent`).

The checks, in order: the peer's uid (UNIX sockets, SO_PEERCRED), TLS (tls:// addresses),
the hello line, then, when a cookie is configured, the challenge-response that proves the
cookie both ways: what those lines must say, and which identity of the access file a
connection is, is :mod:`app_agent._server.admission`'s to decide; the gate does the I/O.
The whole exchange has one deadline per connection.
Refusals are logged with their reason, the first few of each window one by one and the
rest as one summary, so a flood cannot fill the app's log.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from app_agent import wire
from app_agent._server import readiness as readiness
from app_agent._server.access import UNRESTRICTED, Access, Identity, certificate_subject
from app_agent._server.admission import Admission, Pending
from app_agent._server.refusals import RefusalLog, Refused
from app_agent._server.threads import NoThread
from app_agent.wire import ErrorKind, Reason
from app_agent.wire.processes import peer_credentials
from app_agent.wire.records import RecordSocket

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_ACCEPT_BATCH = 64
"""Connections accepted per wake-up, so handshakes in progress keep their turn."""
ERROR_LOG_INTERVAL = 10.0
"""Seconds between two ``gate.error`` lines while the same trouble goes on."""


class _Starved:
    """An episode of accept() failing for lack of descriptors."""

    __slots__ = ("logged", "since", "tries")

    def __init__(self, since: float) -> None:
        self.since = since
        self.tries = 0
        self.logged = False


class Gate:
    """Accepts connections on *listener* and runs their handshakes on one thread.

    *has_room* says whether another RPyC connection may be served; *hand_over* takes an
    admitted connection (socket-like, peer, auth, identity) and readies a thread to serve
    it, raising :class:`~app_agent._server.threads.NoThread` when it cannot; it returns the
    function the gate calls once it has answered: with True the thread serves, with False
    (the answer could not be sent) it ends without touching the socket. With
    *access*, connections are its identities and the agent's *cookie* is not used. *app*
    and *version* are reported in every answer.
    """

    def __init__(
        self,
        listener: socket.socket,
        log: Any,
        allowed_uids: frozenset[int],
        cookie: bytes | None,
        tls: ssl.SSLContext | None,
        has_room: Callable[[], bool],
        hand_over: Callable[[Any, str, str, Identity], Callable[[bool], None]],
        max_pending: int = 512,
        handshake_timeout: float = wire.HANDSHAKE_TIMEOUT,
        access: Access | None = None,
        app: str = "",
        version: str | None = None,
    ) -> None:
        self.listener = listener
        self.log = log
        self.allowed_uids = allowed_uids
        self.tls = tls
        self.has_room = has_room
        self.hand_over = hand_over
        self.max_pending = max_pending
        self.handshake_timeout = handshake_timeout
        self.admission = Admission(cookie, access, app, version)
        self.refusals = RefusalLog(log)
        self._unix = listener.family == socket.AF_UNIX
        self._pending: dict[int, Pending] = {}  # by fd, insertion-ordered: oldest first
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = False
        self._closed = False
        self._registered = False
        self._accept_paused_until: float | None = None
        self._starved: _Starved | None = None  # while accept() fails for lack of descriptors
        self._starved_logged = -ERROR_LOG_INTERVAL
        self._errors = 0  # errors of the loop in a row
        self._error_logged = -ERROR_LOG_INTERVAL
        self._errors_unlogged = 0

    # -- the loop ------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Serve until close(). No error ends the loop: each is logged (``gate.error``) and
        the loop goes on. Anything that still escapes (a BaseException) leaves the listener
        open, so the loop can be run again (``Agent._run`` does)."""
        if not self._registered:
            self.listener.setblocking(False)
            self._wake_r.setblocking(False)
            self._selector.register(self.listener, _READ, "listener")
            self._selector.register(self._wake_r, _READ, "wake")
            self._registered = True
        try:
            while not self._closing:
                try:
                    self._turn()
                except Exception as exc:  # noqa: BLE001  (the gate outlives any error: logged)
                    self._on_error(exc)
                    # A pause that grows while the loop keeps failing, so it cannot spin.
                    self._errors += 1
                    time.sleep(min(0.001 * 2**self._errors, 0.5))
                else:
                    self._errors = 0
        finally:
            if self._closing:
                self.shut()

    def _turn(self) -> None:
        """One wake-up of the loop."""
        ready = self._selector.select(self._next_timeout())
        accept = False
        # Handshakes first, then new connections: a caller whose line has arrived is
        # answered before a flood of arrivals can evict it.
        for key, _mask in ready:
            if key.data == "listener":
                accept = True
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(64)
            else:
                try:
                    self._step(key.data)
                except Exception as exc:  # noqa: BLE001  (one connection's trouble: logged)
                    self._on_error(exc, key.data)
        if accept:
            self._accept()
        self._housekeeping()

    def _on_error(self, exc: Exception, pending: Pending | None = None) -> None:
        """An error of the gate's own: a ``gate.error`` line (at most one per
        ERROR_LOG_INTERVAL, counting the errors not logged since), and the connection it
        was handling closed."""
        now = time.monotonic()
        if now >= self._error_logged + ERROR_LOG_INTERVAL:
            self._error_logged = now
            self.log.error(
                "gate.error",
                error=f"{type(exc).__name__}: {exc}",
                not_logged_before=self._errors_unlogged,
                peer=pending.peer if pending is not None else None,
                exc_info=exc,
            )
            self._errors_unlogged = 0
        else:
            self._errors_unlogged += 1
        if pending is not None:
            with contextlib.suppress(OSError, ValueError):
                self._close(pending)

    def close(self) -> None:
        """Ask the loop to end (from any thread); it closes the listener on its way out."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def shut(self) -> None:
        """Close every descriptor of the gate (the loop does, on its way out); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        for pending in list(self._pending.values()):
            with contextlib.suppress(OSError, ValueError):
                self._close(pending)
        self.refusals.flush()
        self._selector.close()
        for sock in (self._wake_r, self._wake_w, self.listener):
            sock.close()

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the descriptors, nothing more."""
        for pending in self._pending.values():
            pending.sock.close()
        self._selector.close()  # this process's descriptor of it: the parent keeps its own
        for sock in (self._wake_r, self._wake_w, self.listener):
            sock.close()

    def _next_timeout(self) -> float | None:
        times = [
            t
            for t in (
                next(iter(self._pending.values())).deadline if self._pending else None,
                self.refusals.due(),
                self._accept_paused_until,
            )
            if t is not None
        ]
        return max(min(times) - time.monotonic(), 0.0) if times else None

    def _housekeeping(self) -> None:
        now = time.monotonic()
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if oldest.deadline > now:
                break
            self._refuse(oldest, Refused("handshake timed out"))
        due = self.refusals.due()
        if due is not None and due <= now:
            self.refusals.flush()
        if self._accept_paused_until is not None and self._accept_paused_until <= now:
            self._accept_paused_until = None
            self._selector.register(self.listener, _READ, "listener")

    # -- accepting -----------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self._cannot_accept(exc)
                return
            if self._starved is not None:
                self._accepting_again()
            try:
                self._admit_new(sock, address)
            except BaseException:
                sock.close()
                raise

    def _cannot_accept(self, exc: OSError) -> None:
        """Out of descriptors (or memory): stop accepting for a pause that grows while it
        lasts, instead of spinning on a listener that stays readable. Logged once per
        episode (and no more than once per ERROR_LOG_INTERVAL); connections wait in the
        listen queue meanwhile."""
        now = time.monotonic()
        starved = self._starved
        if starved is None:
            starved = self._starved = _Starved(now)
            if now >= self._starved_logged + ERROR_LOG_INTERVAL:
                self._starved_logged = now
                starved.logged = True
                self.log.warning(
                    "gate.cannot_accept",
                    error=exc.strerror,
                    errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
                    reason="new connections wait in the listen queue until descriptors "
                    "are free; accept is retried with a growing pause",
                )
        starved.tries += 1
        self._selector.unregister(self.listener)
        self._accept_paused_until = now + min(0.01 * 2**starved.tries, 0.5)

    def _accepting_again(self) -> None:
        starved, self._starved = self._starved, None
        if starved is not None and starved.logged:
            self.log.info(
                "gate.accepting_again",
                paused_s=round(time.monotonic() - starved.since, 3),
                tries=starved.tries,
            )

    def _admit_new(self, sock: socket.socket, address: Any) -> None:
        sock.setblocking(False)
        if len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending.values()))
            self._refuse(oldest, Refused("evicted: still in its handshake while newer ones wait"))
        if self._unix:
            pid, uid, _gid = peer_credentials(sock)
            peer = f"uid={uid} pid={pid}"
        else:
            peer = f"{address[0]}:{address[1]}"
        pending = Pending(sock, peer, time.monotonic() + self.handshake_timeout)
        if self._unix:
            pending.uid = uid
        try:
            if self._unix:
                pending.methods.append("peer-uid")
                if uid not in self.allowed_uids:
                    reason = f"peer uid {uid} is not allowed (allowed: {sorted(self.allowed_uids)})"
                    raise Refused(reason, ErrorKind.AUTH, code=Reason.PEER_UID)
            if self.tls is not None:
                pending.sock = self.tls.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                )
                pending.phase = "tls"
        except Refused as refused:
            self._refuse(pending, refused, registered=False)
            return
        except (OSError, ValueError) as exc:
            self._refuse(pending, Refused(f"cannot set up the connection ({exc})"), False)
            return
        self._pending[pending.sock.fileno()] = pending
        self._selector.register(pending.sock, _READ, pending)

    # -- one connection's handshake ------------------------------------------------------------

    def _step(self, pending: Pending) -> None:
        try:
            if pending.phase == "tls":
                if not self._tls_handshake(pending):
                    return
                pending.phase = "hello"
                pending.methods.append("tls-client-cert" if self._mutual_tls else "tls")
                if self._mutual_tls:
                    pending.subject = certificate_subject(pending.sock.getpeercert())  # type: ignore[attr-defined]
            line = self._read_line(pending)
            if line is None:
                return
            if pending.phase == "hello":
                self._on_hello(pending, line)
            else:
                self._on_proof(pending, line)
        except Refused as refused:
            self._refuse(pending, refused)
        except ValueError as exc:  # not a well-formed handshake line
            self._refuse(pending, Refused(str(exc)))
        except ssl.SSLError as exc:
            self._refuse(pending, Refused(f"TLS handshake failed: {exc.reason or exc}"))
        except OSError as exc:
            reason = f"connection failed during the handshake ({exc.strerror or exc})"
            self._refuse(pending, Refused(reason))

    def _tls_handshake(self, pending: Pending) -> bool:
        sock: Any = pending.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(pending, _READ)
            return False
        except ssl.SSLWantWriteError:
            self._want(pending, _WRITE)
            return False
        self._want(pending, _READ)
        return True

    def _want(self, pending: Pending, events: int) -> None:
        if pending.events != events:
            pending.events = events
            self._selector.modify(pending.sock, events, pending)

    def _read_line(self, pending: Pending) -> bytes | None:
        """One whole handshake line, or None while it is still arriving."""
        while True:
            try:
                chunk = pending.sock.recv(pending.reader.room)
            except (BlockingIOError, ssl.SSLWantReadError):
                return None
            except ssl.SSLWantWriteError:
                self._want(pending, _WRITE)
                return None
            if not chunk:
                raise Refused("connection closed during the handshake")
            line = pending.reader.feed(chunk)
            if line is not None:
                return line

    def _on_hello(self, pending: Pending, line: bytes) -> None:
        challenge = self.admission.hello(pending, line)
        if challenge is None:
            self._finish(pending)
            return
        pending.phase = "proof"
        self._send(pending, challenge)

    def _on_proof(self, pending: Pending, line: bytes) -> None:
        self.admission.proof(pending, line)
        self._finish(pending)

    def _finish(self, pending: Pending) -> None:
        """Answer an admitted connection: a ping here and now; an rpc connection once a
        thread of its own is ready for it (records under the cookie's keys without TLS)."""
        if pending.op != "ping" and not self.has_room():
            raise Refused(
                "too many connections",
                ErrorKind.UNREACHABLE,
                "the agent serves as many connections as it may; try again shortly",
                Reason.TOO_MANY_CONNECTIONS,
            )
        fields = self.admission.answer(pending)
        auth = "+".join(pending.methods) or "none"
        identity = pending.identity or UNRESTRICTED
        if pending.op == "ping":
            self._send(pending, fields)
            self._accepted(pending, auth, identity)
            self._close(pending)
            return
        sock: Any = pending.sock
        keys = self.admission.record_keys(pending) if self.tls is None else None
        if keys is not None:
            to_agent, to_client = keys
            sock = RecordSocket(sock, send_key=to_client, recv_key=to_agent)
        # The thread first, then the answer: a connection the app has no thread for is
        # refused in words (exit 7), not answered "ok" and then dropped.
        try:
            serve = self.hand_over(sock, pending.peer, auth, identity)
        except NoThread as exc:
            raise Refused(
                f"no thread for the connection: {exc}",
                ErrorKind.BUSY,
                f"{exc}; this call is refused, pings still answer: try again once the app "
                "has fewer threads",
                Reason.NO_THREAD,
            ) from None
        admitted = False
        try:
            self._send(pending, fields)
            self._forget(pending)
            pending.sock.setblocking(True)
            admitted = True
        finally:
            serve(admitted)
        self._accepted(pending, auth, identity)

    def _accepted(self, pending: Pending, auth: str, identity: Identity) -> None:
        # Probes connect every few seconds: only refusals, stops and calls log at info.
        self.log.debug(
            "connection.accepted",
            peer=pending.peer,
            op=pending.op,
            auth=auth,
            identity=identity.name,
        )

    # -- endings -------------------------------------------------------------------------------

    def _send(self, pending: Pending, fields: dict[str, Any]) -> None:
        data = wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, **fields})
        try:
            sent = pending.sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        if sent != len(data):
            # A few hundred bytes fit any socket buffer: a peer that does not read them is
            # not a client.
            raise Refused("the peer does not read its answers")

    def _refuse(self, pending: Pending, refused: Refused, registered: bool = True) -> None:
        if refused.kind is not None:
            answer = {"ok": False, "kind": str(refused.kind), "message": refused.message}
            if refused.code is not None:
                answer["reason"] = str(refused.code)
            with contextlib.suppress(OSError, ValueError, Refused):
                self._send(pending, answer)
        self.refusals.refused(
            pending.peer, refused.reason, "+".join(pending.methods) or "none", pending.named
        )
        if registered:
            self._close(pending)
        else:
            pending.sock.close()

    def _forget(self, pending: Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(pending.sock)

    def _close(self, pending: Pending) -> None:
        self._forget(pending)
        pending.sock.close()

    @property
    def _mutual_tls(self) -> bool:
        return self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED
