"""The cookie: where it comes from, who may read its file, and the proofs built from it.

Both sides use this module; it imports only the standard library.

The handshake proves knowledge of the cookie both ways without sending it: each side sends a
fresh random nonce, and each proof is an HMAC-SHA256 of both nonces under the cookie, with a
different role label for the client and the agent, and the identity the client named (with
an access file, each identity has a cookie of its own). A recorded proof is worthless on another
connection, whose agent nonce differs; proofs are compared in constant time.
"""

from __future__ import annotations

import os
import stat

from app_agent.wire import environment

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

COOKIE_ENV: Final = environment.COOKIE
COOKIE_FILE_ENV: Final = environment.COOKIE_FILE
NONCE_BYTES: Final = 16
MAX_COOKIE_BYTES: Final = 4096
"""A cookie file longer than this is refused, never cut short."""
_HEX: Final = frozenset("0123456789abcdef")


class CookieError(ValueError):
    """A cookie file that cannot be used: missing, empty, or readable by others."""


def read_owner_only(
    path: str,
    what: str,
    limit: int,
    error: type[ValueError],
    missing_hint: str = "",
    owners: tuple[int, ...] = (),
) -> bytes:
    """At most *limit* + 1 bytes of *path*, a regular file only its owner may access
    (cookies, the access file): *error* naming *what* and the fix when it is missing,
    unreadable, not a regular file, open to group or others, or (with *owners*, as the agent
    asks) owned by a uid not among them. Symbolic links are not followed."""
    try:
        # Non-blocking: opening a FIFO would otherwise wait for a writer, for ever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        msg = f"{what} {path} does not exist{missing_hint}"
        raise error(msg) from None
    except OSError as exc:
        msg = f"cannot read {what} {path}: {exc.strerror}"
        raise error(msg) from None
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else ""
            msg = f"{what} {path} is not a regular file{f' ({kind})' if kind else ''}"
            raise error(msg)
        if owners and st.st_uid not in owners:
            from app_agent.wire.processes import uid_label

            msg = (
                f"{what} {path} belongs to {uid_label(st.st_uid)}, who could change it, not to "
                f"this process's user (uid {owners[0]}); fix it with: chown {owners[0]} {path}"
            )
            raise error(msg)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            msg = (
                f"{what} {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}"
            )
            raise error(msg)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def read_cookie_file(path: str | os.PathLike[str], owners: tuple[int, ...] = ()) -> bytes:
    """The cookie in *path*; refused when the file is readable by group or others (or, with
    *owners*, owned by another uid)."""
    path = os.fspath(path)
    hint = f" (create one with `rpcctl cookie generate {path}`)"
    raw = read_owner_only(path, "cookie file", MAX_COOKIE_BYTES, CookieError, hint, owners)
    if len(raw) > MAX_COOKIE_BYTES:
        msg = (
            f"cookie file {path} is longer than {MAX_COOKIE_BYTES} bytes; a cookie is one "
            f"short line (make a new one with `rpcctl cookie generate --force {path}`)"
        )
        raise CookieError(msg)
    cookie = raw.strip()
    if not cookie:
        msg = f"cookie file {path} is empty"
        raise CookieError(msg)
    return cookie


def agent_owners() -> tuple[int, ...]:
    """Whose files the agent takes its secrets from: its own user's, and root's."""
    return (os.geteuid(), 0)


def resolve_cookie(
    cookie: str | bytes | None = None,
    cookie_file: str | os.PathLike[str] | None = None,
    owners: tuple[int, ...] = (),
) -> bytes | None:
    """The cookie from the arguments, else ``RPCCTL_COOKIE``, else ``RPCCTL_COOKIE_FILE``
    (a file owned by one of *owners*, when given)."""
    if cookie is not None:
        value = cookie.encode() if isinstance(cookie, str) else cookie
        if not value.strip():
            msg = "the cookie is empty"
            raise CookieError(msg)
        return value.strip()
    if cookie_file is not None:
        return read_cookie_file(cookie_file, owners)
    from_env = os.environ.get(COOKIE_ENV)
    if from_env is not None:
        if not from_env.strip():
            msg = f"{COOKIE_ENV} is set but empty"
            raise CookieError(msg)
        return from_env.strip().encode()
    file_env = os.environ.get(COOKIE_FILE_ENV)
    if file_env:
        return read_cookie_file(file_env, owners)
    return None


def generate_cookie_file(path: str | os.PathLike[str], force: bool = False) -> None:
    """Write a new random cookie (256 bits) to *path*, owner-only from the first byte."""
    import secrets

    path = os.fspath(path)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        msg = f"{path} already exists (use --force to replace it)"
        raise CookieError(msg) from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
    finally:
        os.close(fd)


def new_nonce() -> str:
    # os.urandom is what secrets uses, without its import cost on the ping path.
    return os.urandom(NONCE_BYTES).hex()


def is_nonce(value: object) -> bool:
    return isinstance(value, str) and len(value) == 2 * NONCE_BYTES and set(value) <= _HEX


def proof(
    cookie: bytes,
    role: str,
    client_nonce: str,
    agent_nonce: str,
    op: str,
    answer: str = "",
    identity: str = "",
) -> str:
    """HMAC-SHA256 over both nonces, bound to the role ("client"/"agent"), the *identity* the
    client named ("" for none) and the operation; the agent's proof also covers *answer*
    (:func:`answer_digest` of what it reports). An identity name holds no newline (see
    :func:`app_agent.wire.handshake.is_identity_name`), so the fields cannot run together."""
    import hashlib
    import hmac

    message = f"rpcctl-v3\n{role}\n{identity}\n{client_nonce}\n{agent_nonce}\n{op}\n{answer}"
    return hmac.new(cookie, message.encode(), hashlib.sha256).hexdigest()


ANSWER_FIELDS: Final = ("pid", "ready", "pong", "app", "version", "identity")
"""The fields of the agent's final answer that its proof covers."""


def answer_digest(fields: dict[str, object]) -> str:
    """The part of the agent's final answer its proof covers: what a relay must not alter
    (``repr`` escapes newlines, so a value cannot pass for another field)."""
    return " ".join(f"{name}={fields.get(name)!r}" for name in ANSWER_FIELDS)


def proof_matches(expected: str, given: object) -> bool:
    import hmac

    # compare_digest refuses non-ASCII text with TypeError: such a proof is simply wrong.
    return isinstance(given, str) and given.isascii() and hmac.compare_digest(expected, given)


def frame_keys(
    cookie: bytes, client_nonce: str, agent_nonce: str, op: str, identity: str = ""
) -> tuple[bytes, bytes]:
    """The two record keys of one connection, (client to agent, agent to client): derived from
    the cookie, the identity and both nonces, so they exist for this connection only."""
    import hashlib
    import hmac

    base = f"rpcctl-v3-records\n{identity}\n{client_nonce}\n{agent_nonce}\n{op}\n"
    return (
        hmac.new(cookie, (base + "client-to-agent").encode(), hashlib.sha256).digest(),
        hmac.new(cookie, (base + "agent-to-client").encode(), hashlib.sha256).digest(),
    )
