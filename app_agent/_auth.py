"""The cookie: where it comes from, who may read its file, and the proofs built from it.

Both sides use this module; it imports only the standard library.

The handshake proves knowledge of the cookie both ways without sending it: each side sends a
fresh random nonce, and each proof is an HMAC-SHA256 of both nonces under the cookie, with a
different role label for the client and the agent. A recorded proof is worthless on another
connection, whose agent nonce differs; proofs are compared in constant time.
"""

from __future__ import annotations

import os
import stat

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

COOKIE_ENV: Final = "RPCCTL_COOKIE"
COOKIE_FILE_ENV: Final = "RPCCTL_COOKIE_FILE"
NONCE_BYTES: Final = 16
_HEX: Final = frozenset("0123456789abcdef")


class CookieError(ValueError):
    """A cookie file that cannot be used: missing, empty, or readable by others."""


def read_cookie_file(path: str | os.PathLike[str]) -> bytes:
    """The cookie in *path*; refused when the file is readable by group or others."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        msg = f"cookie file {path} does not exist (create one with `rpcctl cookie generate {path}`)"
        raise CookieError(msg) from None
    except OSError as exc:
        msg = f"cannot read cookie file {path}: {exc.strerror}"
        raise CookieError(msg) from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            msg = (
                f"cookie file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {path}"
            )
            raise CookieError(msg)
        with os.fdopen(fd, "rb", closefd=False) as f:
            cookie = f.read(4096).strip()
    finally:
        os.close(fd)
    if not cookie:
        msg = f"cookie file {path} is empty"
        raise CookieError(msg)
    return cookie


def resolve_cookie(
    cookie: str | bytes | None = None, cookie_file: str | os.PathLike[str] | None = None
) -> bytes | None:
    """The cookie from the arguments, else ``RPCCTL_COOKIE``, else ``RPCCTL_COOKIE_FILE``."""
    if cookie is not None:
        value = cookie.encode() if isinstance(cookie, str) else cookie
        if not value.strip():
            msg = "the cookie is empty"
            raise CookieError(msg)
        return value.strip()
    if cookie_file is not None:
        return read_cookie_file(cookie_file)
    from_env = os.environ.get(COOKIE_ENV)
    if from_env is not None:
        if not from_env.strip():
            msg = f"{COOKIE_ENV} is set but empty"
            raise CookieError(msg)
        return from_env.strip().encode()
    file_env = os.environ.get(COOKIE_FILE_ENV)
    if file_env:
        return read_cookie_file(file_env)
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


def proof(cookie: bytes, role: str, client_nonce: str, agent_nonce: str, op: str) -> str:
    """HMAC-SHA256 over both nonces, bound to the role ("client"/"agent") and operation."""
    import hashlib
    import hmac

    message = f"rpcctl-v1\n{role}\n{client_nonce}\n{agent_nonce}\n{op}".encode()
    return hmac.new(cookie, message, hashlib.sha256).hexdigest()


def proof_matches(expected: str, given: object) -> bool:
    import hmac

    return isinstance(given, str) and hmac.compare_digest(expected, given)
