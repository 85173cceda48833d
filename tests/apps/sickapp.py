"""A host application that falls ill on request, for tests/test_sick.py.

Run as ``python sickapp.py``; it reads RPCCTL_NODE (and SICKAPP_NOFILE, a descriptor
limit to run under), starts the agent, prints ``READY <node>`` on stdout and serves until
SIGTERM. Its tasks hold the GIL in one C call, or every descriptor the app may open.
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


@task
def hold_descriptors(marker: str, gate: str) -> int:
    """Open descriptors until none is left, make directory MARKER (mkdir needs none), keep
    them until GATE (a file) exists; the number held."""
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        os.mkdir(marker)
        deadline = time.monotonic() + HOLD_SECONDS
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(TICK)
    finally:
        for fd in held:
            os.close(fd)
    return len(held)


def main() -> None:
    limit = os.environ.get("SICKAPP_NOFILE")
    if limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (int(limit), int(limit)))
    agent = app_agent.start(app="sickapp")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"READY {agent.node}", flush=True)
    stop.wait()
    agent.stop()


if __name__ == "__main__":
    main()
