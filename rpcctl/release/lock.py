"""The release lock: one ``rpcctl start`` per release at a time.

A file beside the app's UNIX socket (or in the release root for a TCP node), ``flock``-ed
for the runner's whole life and holding its pid, so a second runner is refused at once and
told whose it is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from rpcctl.exceptions import UsageError
from rpcctl.release.config import Config


@contextlib.contextmanager
def held(config: Config) -> Iterator[None]:
    """Hold the release's lock for the whole run: a second runner is refused at once."""
    path = lock_path(config)
    fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            who = f"runner pid {holder}" if holder else "another runner"
            msg = f"{config.name} is already being run by `rpcctl start` ({who} holds {path})"
            raise UsageError(msg) from None
        # Never truncated (a file we did not make stays as long as it was): padded instead.
        size = os.fstat(fd).st_size
        os.pwrite(fd, f"{os.getpid()}".ljust(size - 1).encode() + b"\n", 0)
        yield
    finally:
        os.close(fd)


def lock_path(config: Config) -> Path:
    """The file ``rpcctl start`` locks for *config*'s release.

    Beside the socket for a UNIX node (``app.sock.lock``), so two configs that share a
    socket share the lock; in the release root (``.rpcctl-NAME.lock``) for a TCP node.
    """
    if config.address.is_unix:
        return Path(f"{config.address.path}.lock")
    return config.root / f".rpcctl-{config.name}.lock"


_LOCK_FLAGS: Final = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_LOCK_BYTES: Final = 32
"""A lock file holds its holder's pid: anything longer is not one of ours."""


def _open_lock(path: Path) -> int:
    """The release lock's descriptor: a regular file of ours, created 0600 if missing. A
    symbolic link (another user may plant one where root's runner would follow it and
    rewrite its target), a file of another user, with other links, or too long to be a
    lock file is refused (UsageError), never written."""
    try:
        # Owner-only, as the agent makes a socket's directory when it is missing.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            try:
                return os.open(path, _LOCK_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            try:
                fd = os.open(path, _LOCK_FLAGS)
                break
            except FileNotFoundError:
                continue  # removed in between: make it again
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
        msg = f"cannot open the release lock {path}: {why}"
        raise UsageError(msg) from None
    problem = _lock_problem(os.fstat(fd))
    if problem is not None:
        os.close(fd)
        msg = f"refusing the release lock {path}: {problem}; remove it if it is not yours"
        raise UsageError(msg)
    return fd


def _lock_problem(st: os.stat_result) -> str | None:
    """Why an existing file cannot be our lock file, if it cannot."""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}, not to us (uid {os.geteuid()})"
    if st.st_nlink != 1:
        return f"it has {st.st_nlink} hard links"
    if st.st_size > _MAX_LOCK_BYTES:
        return f"it holds {st.st_size} bytes: not a lock file"
    return None


def _holder(fd: int) -> int | None:
    """The pid in a held lock file; its holder writes it just after locking, so a moment's
    wait covers a runner that won the lock a moment ago."""
    deadline = time.monotonic() + 0.5
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit() or time.monotonic() > deadline:
            return int(text) if text.isdigit() else None
        time.sleep(0.01)
