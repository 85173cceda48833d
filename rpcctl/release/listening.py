"""Where a process tree listens (Linux ``/proc``): what tells the runner where an app's agent
went when it does not answer at the node the runner gave it."""

from __future__ import annotations

import os

from app_agent.wire import processes

_LISTENING = 0x10000
"""``__SO_ACCEPTCON`` in ``/proc/net/unix``'s flags: the socket listens."""


def process_tree(root: int) -> set[int]:
    """*root* and every process below it; just *root* where ``/proc`` cannot tell."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {root}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        children.setdefault(parent, []).append(int(entry))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, ()))
    return tree


def unix_listeners(pids: set[int]) -> list[str]:
    """The paths of the UNIX sockets that processes *pids* listen on ([] without /proc)."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    paths = []
    try:
        with open("/proc/net/unix") as f:
            next(f, None)  # the header
            for line in f:
                # Num RefCount Protocol Flags Type St Inode Path
                fields = line.rstrip("\n").split(maxsplit=7)
                if len(fields) == 8 and fields[6] in inodes and int(fields[3], 16) & _LISTENING:
                    paths.append(fields[7])
    except (OSError, ValueError):
        return []
    return paths


def agent_socket(root: int) -> str | None:
    """The UNIX socket an agent of *root*'s process tree listens on: one whose recorded pid
    (beside it, see :func:`app_agent.wire.processes.record_agent_pid`) is in the tree."""
    tree = process_tree(root)
    for path in unix_listeners(tree):
        if processes.recorded_agent_pid(path) in tree:
            return path
    return None
