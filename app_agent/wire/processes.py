"""Whether a process exists: the one liveness check both sides use."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists on this host (a zombie counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's
    return True
