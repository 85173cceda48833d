"""The agent's listening socket: bound where its node says, and on ``unix:`` only in a
directory of its own (a socket another user could swap for an impostor's is refused), a
stale socket left by a dead process cleared, and at stop only its own socket removed."""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from app_agent.exceptions import AddressInUse, ConfigurationError
from app_agent.wire import Address, processes
from app_agent.wire.processes import uid_label

UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, NUL included

Inode = tuple[int, int]
"""(st_dev, st_ino) of the socket file this agent made: what stop may remove."""


def bind(address: Address, shared: bool, log: Any) -> tuple[socket.socket, str, Inode | None]:
    """A listening socket at *address*; the node callers use (the real port when port 0 was
    asked), and on ``unix:`` the socket file's inode. *shared*: other local users named by
    the access file may connect (the gate checks who each peer is)."""
    if address.is_unix:
        sock, inode = _bind_unix(address.path, shared, log)
        return sock, str(address), inode
    host, port = address.host, address.port
    try:
        family, _type, _proto, _name, target = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        msg = f"{address}: cannot resolve {host!r} ({exc.strerror})"
        raise ConfigurationError(msg) from None
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(target)
        listener.listen(socket.SOMAXCONN)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            msg = f"{address}: the address is already in use"
            raise AddressInUse(msg) from None
        raise
    host, port = listener.getsockname()[:2]
    return listener, str(Address(address.scheme, host=host, port=port)), None


def _bind_unix(path: str, shared: bool, log: Any) -> tuple[socket.socket, Inode]:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        msg = f"unix:{path}: the socket path is longer than {UNIX_PATH_MAX} bytes"
        raise ConfigurationError(msg)
    directory = os.path.dirname(path)
    # Owner-only: nobody else may even reach the socket file. Unless the access file
    # names other local users: they must be able to connect (and pass through the
    # directory, not list or write it); the gate then checks who each peer is.
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o711 if shared else 0o700, exist_ok=True)
    check_directory_owner(path, directory)
    clear_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o666 if shared else 0o600)
        listener.listen(socket.SOMAXCONN)
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            msg = f"unix:{path}: another agent is already listening on this socket"
            raise AddressInUse(msg) from None
        raise
    st = os.stat(path)
    try:
        processes.record_agent_pid(path)
    except OSError as exc:  # only a diagnostic for later: the agent serves without it
        log.warning("agent.pid_not_recorded", path=path, error=str(exc))
    return listener, (st.st_dev, st.st_ino)


def check_directory_owner(path: str, directory: str) -> None:
    """ConfigurationError when the socket's directory belongs to another user: whoever owns
    it (say, one who made /tmp/app before the app started) could swap the socket for an
    impostor's at any time."""
    directory = directory or "."
    owner = os.stat(directory).st_uid
    if owner not in (os.geteuid(), 0):
        msg = (
            f"unix:{path}: refusing to listen in {directory}: it belongs to {uid_label(owner)}, "
            f"not to this process (uid {os.geteuid()}) or root, so that user could replace the "
            "socket; remove the directory or pick another"
        )
        raise ConfigurationError(msg)


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nothing listens on (left by a process that died); AddressInUse
    when another agent answers there, ConfigurationError when the path is no socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        msg = f"unix:{path}: the path exists and is not a socket; remove it or pick another"
        raise ConfigurationError(msg)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # stale: left behind by a process that died
        return
    except OSError as exc:
        msg = f"unix:{path}: cannot tell whether another agent listens there ({exc})"
        raise AddressInUse(msg) from None
    finally:
        probe.close()
    msg = f"unix:{path}: another agent is already listening on this socket"
    raise AddressInUse(msg)


def remove_own_socket(path: str, inode: Inode | None) -> None:
    """Remove the socket file at *path* if it is still the one this agent made (*inode*):
    another agent may have replaced it since."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == inode:
        os.unlink(path)
        processes.forget_agent_pid(path, os.getpid())
