"""Why an app gave no answer: what its process looks like from outside, read from /proc.

Used only once a wait has run out (never on the ping path's way in). On a UNIX socket the
client knows the listening process without its help: SO_PEERCRED gives the pid of the
process that called ``listen()``, even before the app accepts the connection. On a
loopback TCP port the listener is found through /proc/net/tcp. Its state then tells a
stopped app (SIGSTOP, a debugger) from a zombie, an app out of descriptors, and one that
runs without any of its Python threads getting a word in (native code holding the GIL).
"""

from __future__ import annotations

import os
import socket
import time

from app_agent.wire import Address, processes

SCAN_BUDGET = 0.3
"""Seconds spent at most looking through /proc for the process of a loopback TCP port."""

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator


def why_silent(sock: socket.socket, address: Address, waited: float) -> str:
    """The sentence for a handshake that got no answer within *waited* seconds."""
    what = f"{address}: the agent did not answer the handshake within {_seconds(waited)}"
    pid = listener_pid(sock, address)
    if pid is None:
        if not address.is_loopback:
            return (
                f"{address}: the app accepted the connection but did not answer within "
                f"{_seconds(waited)} (it may be stopped, blocked by native code, or out of "
                "descriptors: on its host, `py-spy dump --pid PID` shows where it is)"
            )
        return what
    return f"{what}: {process_state(pid)}"


def why_stalled(pid: int) -> str | None:
    """What stopped the app (*pid*, on this host) from answering a request, when its
    process says so unambiguously (stopped, exited); None when it looks alive."""
    state = _state(pid)
    if state in ("T", "t", "Z", "X", None):
        return process_state(pid)
    return None


def listener_pid(sock: socket.socket, address: Address) -> int | None:
    """The pid of the process listening at *address* (on this host), if it can be known."""
    if address.is_unix:
        try:
            pid = processes.peer_credentials(sock)[0]
        except OSError:
            return None
        return pid or None  # 0: a process in a pid namespace we cannot see
    if address.is_loopback and address.port is not None:
        return _tcp_listener_pid(address.port)
    return None


def process_state(pid: int) -> str:
    """What the process *pid* is doing, as a reason and what to do next."""
    state = _state(pid)
    if state is None or state in ("Z", "X"):
        kept = (
            "a process it forked still holds its socket open, so nothing answers; `ss -lp` names it"
        )
        if state is None:
            return f"the app (pid {pid}) that listened there has exited, but {kept}"
        return f"the app (pid {pid}) has exited (a zombie its parent has not reaped), but {kept}"
    if state in ("T", "t"):
        return (
            f"the app (pid {pid}) is stopped — SIGSTOP or a debugger; `kill -CONT {pid}` resumes it"
        )
    full = _descriptors_full(pid)
    if full is not None:
        return (
            f"the app (pid {pid}) has all {full} descriptors it may open (RLIMIT_NOFILE) in "
            f"use, so it cannot accept the connection; `ls -l /proc/{pid}/fd` shows what holds them"
        )
    if "R" in set(_thread_states(pid)):
        return (
            f"the app (pid {pid}) is running but none of its Python threads answered: native "
            f"code may be holding the GIL; `py-spy dump --pid {pid}` shows where"
        )
    return (
        f"the app (pid {pid}) is alive but none of its Python threads answered: one may hold "
        f"the GIL while it waits in native code; `py-spy dump --pid {pid}` shows where"
    )


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, D, T, t, Z, X...); None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        return "?"  # cannot tell: treated as alive


def _thread_states(pid: int) -> Iterator[str]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                yield f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue


def _descriptors_full(pid: int) -> int | None:
    """The process's descriptor limit when it has that many open; None otherwise (or when
    /proc does not say: another user's process)."""
    try:
        with open(f"/proc/{pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        soft = int(line.split()[3])
        opened = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return soft if opened >= soft else None


def _tcp_listener_pid(port: int) -> int | None:
    """The pid of the process with a socket listening on TCP *port* of this host."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    # local address "ADDR:PORT" in hex; state 0A is LISTEN
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{fields[9]}]")
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    if not inodes:
        return None
    deadline = time.monotonic() + SCAN_BUDGET
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        if time.monotonic() > deadline:
            return None  # a host with too many processes to look through in time
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    return int(entry)
        except OSError:
            continue  # gone, or another user's
    return None


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}s"
