"""A small host application for the tests: an agent with tasks of every kind.

Run as ``python sampleapp.py``; it reads RPCCTL_NODE, starts the agent, prints
``READY <node>`` on stdout and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import app_agent
from app_agent import task

# How often the cooperative tasks below look at what they wait for (a file, cancellation).
TICK = 0.01
# How long the "slow" fleet node's task takes: far past any fleet test's deadline.
SLOW_NODE_SECONDS = 120

_counter_lock = threading.Lock()
_counter = 0


@task
def echo(value: Any = None) -> Any:
    """Return VALUE unchanged."""
    return value


@task(name="add")
def add(a: int, b: int = 0, *, scale: int = 1) -> int:
    """Add two numbers and scale the sum."""
    return (a + b) * scale


@task
def boom(message: str = "boom") -> None:
    """Raise ValueError(MESSAGE)."""
    raise ValueError(message)


@task
def exit_app() -> None:
    """Raise SystemExit, which must not end the app."""
    raise SystemExit(3)


@task
def sleep(seconds: float) -> float:
    """Sleep SECONDS and return them."""
    time.sleep(seconds)
    return seconds


@task
async def async_double(x: int) -> int:
    """Double X on an event loop."""
    await asyncio.sleep(0)
    return 2 * x


@task
def weird() -> Any:
    """Return values JSON cannot carry as they are."""
    return {
        "when": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "set": {3, 1, 2},
        "bytes": b"\xff\x00",
        "object": object.__new__(Plain),
        "tuple": (1, 2),
    }


class Plain:
    def __repr__(self) -> str:
        return "<Plain>"


@task
def identity(token: str) -> dict[str, Any]:
    """Return TOKEN with the pid and thread that ran it."""
    global _counter
    with _counter_lock:
        _counter += 1
    return {"token": token, "pid": os.getpid(), "thread": threading.current_thread().name}


@task
def chatty(lines: int = 10, pause: float = 0.0, gate: str = "") -> int:
    """Print LINES lines (waiting for GATE, a file, to exist before the last), log and report
    progress; returns LINES."""
    log = logging.getLogger("sampleapp.chatty")
    for i in range(1, lines + 1):
        if i == lines and gate:
            while not os.path.exists(gate):
                time.sleep(TICK)
        print(f"line {i}")
        app_agent.progress(i, lines, f"step {i}")
        if i == 1:
            print("to stderr", file=sys.stderr)
            log.warning("logged at warning")
        if pause:
            time.sleep(pause)
    return lines


@task
def cancellable(seconds: float = 30.0) -> str:
    """Work for up to SECONDS, stopping early when cancelled."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if app_agent.cancelled():
            print("stopping early")
            return "stopped"
        time.sleep(TICK)
    return "finished"


@task
async def async_wait(seconds: float = 30.0) -> str:
    """Await for SECONDS (cancellable)."""
    print("waiting")
    await asyncio.sleep(seconds)
    return "done"


@task(lock="sample-lock")
def locked(seconds: float = 1.0) -> str:
    """Hold the sample-lock for SECONDS, or until cancelled."""
    print("holding the lock")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not app_agent.cancelled():
        time.sleep(TICK)
    return "released"


@task(timeout=0.3)
def limited(seconds: float = 5.0) -> str:
    """Sleep SECONDS (checking cancellation) under an agent-side timeout of 0.3 s."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not app_agent.cancelled():
        time.sleep(TICK)
    return "ended"


@task(timeout=0.3)
def stubborn(gate: str) -> str:
    """Wait for GATE (a file) to exist, never checking cancellation, under a 0.3 s timeout."""
    while not os.path.exists(gate):
        time.sleep(TICK)
    return "ended"


@task
def lines(count: int = 1000) -> int:
    """Print COUNT numbered lines as fast as it can; returns COUNT."""
    for i in range(count):
        print(f"line {i}")
    return count


@task
def gated_lines(gate: str, count: int = 1000) -> int:
    """Print "ready", wait for GATE (a file) to exist, then print COUNT numbered lines as
    fast as it can; returns COUNT."""
    print("ready")
    while not os.path.exists(gate):
        time.sleep(TICK)
    for i in range(count):
        print(f"line {i}")
    return count


@task
def big_result(mib: int = 1) -> str:
    """Return a string of MIB mebibytes."""
    return "x" * (mib << 20)


@task
def deep(depth: int = 5000) -> Any:
    """Return lists nested DEPTH levels deep."""
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@task
def set_follower_grace(seconds: float) -> float:
    """Set how long a job waits for a follower that has stopped reading (tests only)."""
    from app_agent._jobs import job as _job

    _job.FOLLOWER_GRACE = seconds
    return seconds


@task
def whoami() -> str:
    """This node's name; SAMPLEAPP_ROLE=raise makes it fail, =slow makes it hang."""
    role = os.environ.get("SAMPLEAPP_ROLE", "")
    if role == "raise":
        msg = "this node is broken"
        raise RuntimeError(msg)
    if role == "slow":
        time.sleep(SLOW_NODE_SECONDS)
    return os.environ.get("SAMPLEAPP_NAME", str(os.getpid()))


@task(log_values=True)
def greet(name: str) -> str:
    """Greet NAME (its argument values may be logged: nothing secret here)."""
    return f"hello {name}"


@task
def ready(flag: bool = True) -> bool:
    """Declare the app ready (or not)."""
    app_agent.set_ready(flag)
    return flag


@task
def crash(code: int = 7) -> None:
    """End the whole process at once with exit status CODE (a crash, for the runner)."""
    os._exit(code)


@task(record_args=True)
def remember(note: str, count: int = 1) -> int:
    """Return COUNT; the durable job history keeps NOTE and COUNT (record_args=True)."""
    return count


def main() -> None:
    app_agent.configure_logging(json=True)
    marker = os.environ.get("SAMPLEAPP_MARKER")
    if marker:
        with open(marker, "a") as f:
            f.write(f"started {os.getpid()}\n")
    delay = float(os.environ.get("SAMPLEAPP_AGENT_DELAY", "0"))
    if delay:
        time.sleep(delay)  # an app whose agent comes up late, for the runner's tests
    agent = app_agent.start(app="sampleapp", locks=os.environ.get("SAMPLEAPP_LOCKS"))
    stop = threading.Event()
    if os.environ.get("SAMPLEAPP_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {agent.node}", flush=True)
    stop.wait()
    agent.stop()
    if marker:
        with open(marker, "a") as f:
            f.write(f"stopped {os.getpid()}\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
