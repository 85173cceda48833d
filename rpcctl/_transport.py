"""Opening a connection to an agent and doing the handshake: standard library only.

``rpcctl ping`` uses nothing but this module, so it never imports RPyC.
"""

from __future__ import annotations

import os
import socket
import stat
import sys
import time

from app_agent import wire
from app_agent.wire import Address, ErrorKind, Reason, cookies, processes
from app_agent.wire.backoff import Backoff
from app_agent.wire.processes import uid_label
from rpcctl.exceptions import (
    BY_KIND,
    AuthenticationFailed,
    CallTimeout,
    ConfigError,
    NotReady,
    Unreachable,
    UsageError,
)

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Any

_NO_COOKIE_HINT = (
    "set RPCCTL_COOKIE, or use a cookie file (--cookie-file, RPCCTL_COOKIE_FILE, "
    "or cookie_file in rpcctl.toml)"
)


class Security:
    """What the client proves and checks: the cookie, the identity it belongs to (for an
    agent with an access file), and TLS settings for tls:// nodes."""

    def __init__(
        self,
        cookie: bytes | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        identity: str | None = None,
    ) -> None:
        if identity is not None and not wire.is_identity_name(identity):
            msg = (
                f"bad identity {identity!r}: expected 1 to 64 letters, digits, _ . or -, "
                "starting with a letter or digit"
            )
            raise ConfigError(msg)
        self.cookie = cookie
        self.tls_ca = tls_ca
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.identity = identity

    @classmethod
    def resolve(
        cls,
        cookie: str | bytes | None = None,
        cookie_file: str | os.PathLike[str] | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        identity: str | None = None,
    ) -> Security:
        """From the arguments, else ``RPCCTL_COOKIE``/``RPCCTL_COOKIE_FILE``,
        ``RPCCTL_TLS_CA``/``RPCCTL_TLS_CERT``/``RPCCTL_TLS_KEY`` and ``RPCCTL_IDENTITY``."""
        try:
            secret = cookies.resolve_cookie(cookie, cookie_file)
        except cookies.CookieError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            secret,
            tls_ca or os.environ.get(wire.environment.TLS_CA),
            tls_cert or os.environ.get(wire.environment.TLS_CERT),
            tls_key or os.environ.get(wire.environment.TLS_KEY),
            identity or os.environ.get(wire.environment.IDENTITY) or None,
        )

    def tls_context(self) -> ssl.SSLContext:
        import ssl

        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            msg = f"cannot load the TLS files ({exc})"
            raise ConfigError(msg) from None
        return context


def open_socket(address: Address, timeout: float, security: Security) -> socket.socket:
    """Connect to *address* (TLS for tls://); Unreachable or CallTimeout when that fails."""
    deadline = time.monotonic() + timeout
    directory_owner = None
    if address.is_unix:
        directory_owner = _check_socket_directory(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = address.path
    else:
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            msg = f"{address}: cannot resolve {address.host!r} ({exc.strerror})"
            raise Unreachable(
                msg, reason=Reason.CANNOT_RESOLVE, data={"host": address.host}
            ) from None
        family, _type, _proto, _name, target = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(timeout)
    try:
        _connect(sock, target, deadline)
    except TimeoutError:
        sock.close()
        msg = f"{address}: no answer within {timeout:g}s"
        raise CallTimeout(msg, reason=Reason.NO_ANSWER, data={"seconds": timeout}) from None
    except FileNotFoundError:
        sock.close()
        msg = f"{address}: no agent is running (the socket does not exist)"
        raise Unreachable(msg, reason=Reason.NO_SOCKET, data={"path": address.path}) from None
    except ConnectionRefusedError:
        sock.close()
        gone = processes.gone_agent_pid(address.path) if address.is_unix else None
        data: dict[str, Any] = {"path": address.path} if address.is_unix else {}
        if gone is not None:
            why = f": the app exited without stopping its agent (pid {gone} is gone)"
            reason, data["pid"] = Reason.APP_GONE, gone
        elif address.is_unix:
            why, reason = " (the socket is stale)", Reason.STALE_SOCKET
        else:
            why, reason = " (connection refused)", Reason.CONNECTION_REFUSED
        msg = f"{address}: no agent is running{why}"
        raise Unreachable(msg, reason=reason, data=data) from None
    except OSError as exc:
        sock.close()
        msg = f"{address}: cannot connect ({exc.strerror or exc})"
        raise Unreachable(msg, reason=Reason.CANNOT_CONNECT) from None
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    if address.is_unix:
        try:
            _check_peer(sock, address, directory_owner)
        except BaseException:
            sock.close()
            raise
    if address.scheme == "tls":
        sock = _wrap_tls(sock, address, security)
    return sock


def _connect(sock: socket.socket, target: Any, deadline: float) -> None:
    """Connect; a UNIX socket whose listen queue is full (the agent is busy accepting, say
    under a connect flood) is tried again until the deadline rather than given up at once."""
    backoff = Backoff(0.001, 0.02, deadline, factor=2)
    while True:
        try:
            sock.connect(target)
        except BlockingIOError:
            if not backoff.sleep():
                raise TimeoutError from None
        else:
            return


def _check_socket_directory(address: Address) -> int | None:
    """The uid owning the socket's directory; AuthenticationFailed when others may write it
    (anyone who can write there could have put an impostor's socket in the agent's place)."""
    directory = os.path.dirname(address.path)
    try:
        st = os.stat(directory)
    except OSError:
        return None  # connecting will say what is wrong
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "anyone" if mode & stat.S_IWOTH else "its group"
        msg = (
            f"{address}: refusing the socket: its directory {directory} is writable by {who} "
            f"(mode {mode:04o}), so another user could have put an impostor there; keep the "
            "socket in a directory only its owner can write (e.g. one made with mode 0700)"
        )
        raise AuthenticationFailed(msg, reason=Reason.UNSAFE_DIRECTORY, data={"path": directory})
    return st.st_uid


def _check_peer(sock: socket.socket, address: Address, directory_owner: int | None) -> None:
    """Trust the process at the other end only when it runs as us, as root, or as the owner of
    the socket's directory (an app run as its own user, operated by root) when nobody else
    could have made that directory: the rule of OpenSSH's StrictModes."""
    pid, uid, _gid = processes.peer_credentials(sock)
    if uid in (os.geteuid(), 0):
        return
    if uid != directory_owner:
        msg = (
            f"{address}: refusing to talk to the process listening there (pid {pid}, uid {uid}): "
            f"it is neither us (uid {os.geteuid()}), root, nor the owner of the socket's "
            f"directory (uid {directory_owner}), so it may be an impostor"
        )
        raise AuthenticationFailed(msg, reason=Reason.UNTRUSTED_PEER, data={"pid": pid, "uid": uid})
    directory = os.path.dirname(os.path.abspath(address.path))
    found = _writable_ancestor(directory, uid)
    if found is not None:
        parent, mode, owner = found
        who = "anyone" if mode & stat.S_IWOTH else "its group" if mode & stat.S_IWGRP else None
        by = f"by {who} (mode {mode:04o})" if who else f"by its owner, uid {owner}"
        msg = (
            f"{address}: refusing to talk to the process listening there (pid {pid}): it runs "
            f"as {uid_label(uid)}, the owner of the socket's directory {directory}, "
            f"but {parent} above it is writable {by}, so another user could have made that "
            "directory; keep the socket in a directory whose parents only root can write "
            "(e.g. /run/APP)"
        )
        raise AuthenticationFailed(msg, reason=Reason.UNSAFE_DIRECTORY, data={"path": parent})


def _writable_ancestor(directory: str, owner: int) -> tuple[str, int, int] | None:
    """The first directory above *directory* (up to /) that someone other than root and
    *owner* may write, with its mode and owner: who could have made *directory*. None when
    there is none. A sticky world-writable one (/tmp) counts: anyone may create in it."""
    path = os.path.realpath(directory)
    while path != "/":
        path = os.path.dirname(path)
        try:
            st = os.stat(path)
        except OSError:
            return path, 0, -1
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, owner) or mode & (stat.S_IWGRP | stat.S_IWOTH):
            return path, mode, st.st_uid
    return None


def _wrap_tls(sock: socket.socket, address: Address, security: Security) -> socket.socket:
    import ssl

    try:
        return security.tls_context().wrap_socket(sock, server_hostname=address.host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        msg = f"{address}: TLS: the agent's certificate is not trusted ({exc.verify_message})"
        raise AuthenticationFailed(msg, reason=Reason.TLS) from None
    except ssl.SSLError as exc:
        sock.close()
        msg = f"{address}: TLS handshake failed ({exc.reason or exc})"
        raise AuthenticationFailed(msg, reason=Reason.TLS) from None
    except TimeoutError:
        sock.close()
        msg = f"{address}: the TLS handshake timed out"
        raise CallTimeout(msg, reason=Reason.NO_ANSWER) from None
    except OSError as exc:
        sock.close()
        msg = f"{address}: the connection failed during the TLS handshake ({exc})"
        raise Unreachable(msg, reason=Reason.CONNECTION_LOST) from None


def handshake(
    sock: socket.socket, address: Address, op: str, security: Security
) -> tuple[dict[str, Any], tuple[bytes, bytes] | None]:
    """Say hello for *op* (naming our identity, if we have one), prove the cookie and check
    the agent's proof: the agent's answer (pid, ready, app, version, identity), and the
    record keys (client to agent, agent to client) when the connection must carry
    authenticated records from now on (a cookie without TLS)."""
    client_nonce = cookies.new_nonce()
    named = security.identity or ""
    hello: dict[str, Any] = {"op": op, "nonce": client_nonce}
    if named:
        hello["identity"] = named
    waited = sock.gettimeout() or 0.0
    deadline = time.monotonic() + waited  # one deadline for the whole exchange
    try:
        answer = _exchange(sock, address, hello, deadline)
        if "challenge" in answer:
            agent_nonce = answer["challenge"]
            if not cookies.is_nonce(agent_nonce):
                msg = f"{address}: the agent sent a malformed challenge"
                raise AuthenticationFailed(msg, reason=Reason.AGENT_UNPROVEN)
            cookie = security.cookie
            mine = (
                None
                if cookie is None
                else cookies.proof(cookie, "client", client_nonce, agent_nonce, op, identity=named)
            )
            answer = _exchange(sock, address, {"proof": mine}, deadline)
            _check(answer, address, had_cookie=cookie is not None, identity=named)
            assert cookie is not None  # an agent that challenges refuses a missing proof
            digest = cookies.answer_digest(answer)
            theirs = cookies.proof(
                cookie, "agent", client_nonce, agent_nonce, op, digest, identity=named
            )
            if not cookies.proof_matches(theirs, answer.get("proof")):
                msg = (
                    f"{address}: the agent's proof does not match our cookie: "
                    "it is not the agent we share the cookie with (or its answer was altered)"
                )
                raise AuthenticationFailed(msg, reason=Reason.AGENT_UNPROVEN)
            keys = None
            if address.scheme != "tls":
                keys = cookies.frame_keys(cookie, client_nonce, agent_nonce, op, identity=named)
            return answer, keys
        _check(answer, address, had_cookie=security.cookie is not None, identity=named)
        if security.cookie is not None:
            msg = (
                f"{address}: the agent has no cookie, so it cannot prove it is ours; "
                "configure the same cookie on the agent, or drop ours"
            )
            raise AuthenticationFailed(msg, reason=Reason.AGENT_UNPROVEN)
        return answer, None
    except TimeoutError:
        from rpcctl._diagnose import why_silent  # only now: what the app's process looks like

        raise CallTimeout(
            why_silent(sock, address, waited), reason=Reason.NO_ANSWER, data={"seconds": waited}
        ) from None
    except OSError as exc:
        if _is_tls_error(exc):
            # With TLS 1.3 a refused client certificate shows up on the first read.
            msg = f"{address}: TLS: the agent refused us ({getattr(exc, 'reason', None) or exc})"
            raise AuthenticationFailed(msg, reason=Reason.TLS) from None
        msg = f"{address}: the connection failed during the handshake ({exc.strerror or exc})"
        raise Unreachable(msg, reason=Reason.CONNECTION_LOST) from None


def _exchange(
    sock: socket.socket, address: Address, fields: dict[str, Any], deadline: float
) -> dict[str, Any]:
    if sock.gettimeout() is not None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
    # An agent that refused before reading has closed: its reason may still be waiting.
    try:  # noqa: SIM105  (not contextlib: this module is the whole of `rpcctl ping`)
        sock.sendall(wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, **fields}))
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        line = _read_line(sock)
        if not line:
            msg = f"{address}: the agent closed the connection during the handshake"
            raise Unreachable(msg, reason=Reason.CONNECTION_LOST)
        return wire.decode_line(line)
    except ValueError:
        msg = f"{address}: this is not an rpcctl agent (unexpected handshake answer)"
        raise UsageError(msg, reason=Reason.NOT_AN_AGENT) from None


def _check(answer: dict[str, Any], address: Address, had_cookie: bool, identity: str) -> None:
    if answer.get("ok"):
        return
    kind = _kind(answer.get("kind"))
    message = str(answer.get("message", "refused"))
    reason = answer.get("reason")
    # Our own words for what the agent's reason code says we did (its message is its own).
    if reason == Reason.NO_COOKIE:
        message = f"the agent requires a cookie: {_NO_COOKIE_HINT}"
    elif reason == Reason.WRONG_COOKIE and identity:
        message = (
            f"identity {identity!r} refused: the agent knows no such identity, or our cookie "
            "is not that identity's"
        )
    elif reason == Reason.WRONG_COOKIE and had_cookie:
        message = "wrong cookie: the agent refused our proof"
    code = str(reason) if isinstance(reason, str) else None
    raise BY_KIND[kind](f"{address}: {message}", reason=code)


def ping(
    address: Address, timeout: float, security: Security, ready: bool = False
) -> dict[str, Any]:
    """One ping through the handshake alone: no RPyC on either side. With *ready*, the app
    must also have declared itself ready (NotReady otherwise). The agent's answer: pid,
    ready, app, version (and identity, with an access file)."""
    sock = open_socket(address, timeout, security)
    try:
        answer, _keys = handshake(sock, address, "ping", security)
    finally:
        sock.close()
    if ready and answer.get("ready") is False:
        msg = f"{address}: the agent answers, but the app is not ready"
        raise NotReady(msg, reason=Reason.NOT_READY)
    return answer


def _read_line(sock: socket.socket) -> bytes:
    """The agent's answer line; b"" when it closed first. ValueError when it is too long."""
    reader = wire.LineReader()
    while True:
        try:
            chunk = sock.recv(reader.room)
        except ConnectionResetError:
            return b""
        if not chunk:
            return reader.buffer
        line = reader.feed(chunk)
        if line is not None:
            return line


def _is_tls_error(exc: OSError) -> bool:
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError)


def _kind(value: Any) -> ErrorKind:
    try:
        return ErrorKind(value)
    except ValueError:
        return ErrorKind.UNREACHABLE
