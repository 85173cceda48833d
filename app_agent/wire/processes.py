"""Local processes and users: the one liveness check both sides use, the one reader of a
UNIX socket's peer, how a uid is named, and the pid an agent records beside its UNIX
socket, which names the process that left a stale socket behind."""

from __future__ import annotations

import os

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a UNIX socket (SO_PEERCRED: the
    listener's even before it accepts; pid 0 for a process in a pid namespace we cannot see)."""
    import socket
    import struct

    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def pid_alive(pid: int) -> bool:
    """Whether process *pid* runs on this host. A zombie (exited, not yet reaped by its
    parent) counts as gone: it will never answer, stop or signal anything again."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass  # no /proc here: ask the kernel, which cannot tell a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True


# -- the pid an agent records beside its UNIX socket ------------------------------------------
# A socket file outlives a process that dies without stopping its agent (SIGKILL, a crash, a
# SIGTERM with no handler); the pid beside it says which process that was.

_PID_SUFFIX = ".pid"
_MAX_PID_TEXT = 32


def agent_pid_file(socket_path: str) -> str:
    """Where the agent listening at *socket_path* records its pid: ``SOCKET.pid``."""
    return socket_path + _PID_SUFFIX


def record_agent_pid(socket_path: str) -> None:
    """Write this process's pid beside its socket (atomically: readers see all or nothing)."""
    path = agent_pid_file(socket_path)
    partial = f"{path}.{os.getpid()}"
    try:  # noqa: SIM105  (not contextlib, which the ping path does not load)
        os.unlink(partial)  # left by a process of the same pid that died mid-write
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    os.replace(partial, path)


def recorded_agent_pid(socket_path: str) -> int | None:
    """The pid recorded beside *socket_path*; None when there is none (or it is garbled)."""
    try:
        with open(agent_pid_file(socket_path), "rb") as f:
            text = f.read(_MAX_PID_TEXT).strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 1 << 31 else None


def forget_agent_pid(socket_path: str, pid: int) -> None:
    """Remove the pid file beside *socket_path* if it still names *pid* (a newer agent's
    stays)."""
    if recorded_agent_pid(socket_path) == pid:
        try:  # noqa: SIM105  (not contextlib, which the ping path does not load)
            os.unlink(agent_pid_file(socket_path))
        except FileNotFoundError:
            pass


def gone_agent_pid(socket_path: str) -> int | None:
    """The pid recorded beside *socket_path* when that process no longer runs: the app that
    left the socket behind. None when none is recorded or it still runs."""
    pid = recorded_agent_pid(socket_path)
    return pid if pid is not None and not pid_alive(pid) else None


def remove_stale_socket(socket_path: str) -> bool:
    """Remove the UNIX socket at *socket_path*, and its pid file, when it is a socket that
    nothing listens on: what an app that died without stopping its agent leaves behind.
    Anything else (no file, not a socket, a listener, no permission) is left alone: False."""
    import socket
    import stat

    try:
        before = os.lstat(socket_path)
    except OSError:
        return False
    if not stat.S_ISSOCK(before.st_mode):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a listener with a full queue answers EAGAIN: it is alive
    try:
        probe.connect(socket_path)
    except ConnectionRefusedError:
        pass
    except OSError:
        return False
    else:
        return False
    finally:
        probe.close()
    try:
        # Still the same file: a new agent may have replaced it while we probed.
        after = os.lstat(socket_path)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            return False
        os.unlink(socket_path)
    except OSError:
        return False
    pid = gone_agent_pid(socket_path)
    if pid is not None:
        forget_agent_pid(socket_path, pid)
    return True


def uid_label(uid: int) -> str:
    """``uid 65534 (nobody)``: a uid as messages name it, with its user name when it has one."""
    import pwd  # only when a message needs it: the ping path never does

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
