"""A host application that falls ill on request, for tests/test_sick.py.

Run as ``python sickapp.py``; it reads RPCCTL_NODE (SICKAPP_NOFILE, a descriptor limit
to run under, and SICKAPP_DIR), starts the agent, prints ``READY <node>`` on stdout and
serves until SIGTERM. Its task holds the GIL in one C call; on SIGUSR1 it holds every
descriptor it may open (marking it in SICKAPP_DIR).
"""

from __future__ import annotations

import os
import resource
import signal
import threading
import time

import app_agent
from app_agent import task

TICK = 0.01
HOLD_SECONDS = 120  # how long a task holds what it holds at most


@task
def hold_gil(marker: str) -> int:
    """Make directory MARKER, then hold the GIL in one C call (a sum over a huge range:
    no bytecode runs, so no other thread gets the GIL) for minutes."""
    os.mkdir(marker)
    return sum(range(10**12))


_episodes = iter(range(1, 1000))


def hold_descriptors(directory: str) -> None:
    """Open descriptors until none is left, make directory DIRECTORY/holding-N (mkdir
    needs none), keep them until DIRECTORY/release-N exists. Run on SIGUSR1 (N counts the
    signals), not as a task: a connection of its own would free a descriptor as it ends."""
    episode = next(_episodes)
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        os.mkdir(f"{directory}/holding-{episode}")
        deadline = time.monotonic() + HOLD_SECONDS
        while not os.path.exists(f"{directory}/release-{episode}"):
            if time.monotonic() > deadline:
                break
            time.sleep(TICK)
    finally:
        for fd in held:
            os.close(fd)


def main() -> None:
    limit = os.environ.get("SICKAPP_NOFILE")
    if limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(limit), int(limit)))
    directory = os.environ.get("SICKAPP_DIR", ".")
    signal.signal(
        signal.SIGUSR1,
        lambda *_: threading.Thread(target=hold_descriptors, args=(directory,)).start(),
    )
    agent = app_agent.start(app="sickapp")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"READY {agent.node}", flush=True)
    stop.wait()
    agent.stop()


if __name__ == "__main__":
    main()
