"""Local processes and users: the one liveness check both sides use, and how a uid is named."""

from __future__ import annotations

import os


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


def uid_label(uid: int) -> str:
    """``uid 65534 (nobody)``: a uid as messages name it, with its user name when it has one."""
    import pwd  # only when a message needs it: the ping path never does

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"
