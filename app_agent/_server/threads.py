"""Starting the agent's threads in an app that may be out of them.

A thread-hungry app (or a container's ``pids.max``, or ``RLIMIT_NPROC``) can leave no room
for another thread: ``Thread.start()`` then raises ``RuntimeError``. The agent turns that
into :class:`NoThread`, whose message says so and how many threads the app has, so the one
call that needed the thread is refused (exit 7) and everything else goes on.
"""

from __future__ import annotations

import threading


class NoThread(RuntimeError):
    """The app cannot start another thread; the message says how many it has."""


def start(thread: threading.Thread) -> None:
    """``thread.start()``, raising NoThread when the process cannot start one."""
    try:
        thread.start()
    except RuntimeError as exc:  # "can't start new thread": the OS refused (EAGAIN)
        msg = f"the app cannot start a thread (it has {count()} threads: {exc})"
        raise NoThread(msg) from None


def count() -> int:
    """The process's threads, native ones included (/proc), else the Python ones."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return threading.active_count()
