"""A host application for the introspection tests: known threads, health checks, hot code.

Run as ``python introapp.py``; it reads RPCCTL_NODE, starts the agent, prints
``READY <node>`` on stdout and serves until SIGTERM. With INTROAPP_LOOP=1 it runs inside
``asyncio.run`` and starts the agent on that loop, with a task named "intro-waiter".
Logging is stdlib logging with structlog on top of it (``filter_by_level``), the set-up
whose levels ``rpcctl log-level`` changes.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import structlog

import app_agent
from app_agent import health_check, task

TICK = 0.01
HANG_SECONDS = 120  # how long a hanging health check or a blocked loop lasts at most

_state: dict[str, Any] = {"sick": bool(os.environ.get("INTROAPP_SICK")), "hang": False}
_unhang = threading.Event()
_held: list[Any] = []
_known_stop = threading.Event()


class Marker:
    """Objects to count with `rpcctl stats --objects`."""


# -- threads the tests look for ----------------------------------------------------------------


def known_thread_body() -> None:
    _known_stop.wait()


def parked_thread_body(release: threading.Event) -> None:
    release.wait()


# -- health checks -----------------------------------------------------------------------------


@health_check(name="introapp.database")
def database() -> None:
    if _state["sick"]:
        msg = "database unreachable"
        raise ConnectionError(msg)


@health_check(name="introapp.slow", timeout=0.5)
def slow() -> bool:
    if _state["hang"]:
        _unhang.wait(HANG_SECONDS)
    return True


@task
def set_sick(flag: bool = True) -> bool:
    """Make the database check fail (or pass again)."""
    _state["sick"] = flag
    return flag


@task
def set_hang(flag: bool = True) -> bool:
    """Make the slow check hang (or let it return)."""
    global _unhang
    _state["hang"] = flag
    if not flag:
        _unhang.set()
        _unhang = threading.Event()
    return flag


# -- busy code ---------------------------------------------------------------------------------


def hot_loop(deadline: float) -> int:
    """Pure CPU until cancelled or *deadline*: what a profile must find."""
    total = 0
    while True:
        for i in range(10_000):
            total += i * i % 7
        if app_agent.cancelled() or time.monotonic() > deadline:
            return total


@task
def spin(seconds: float = 60.0) -> int:
    """Burn CPU in hot_loop for SECONDS or until cancelled."""
    print("spinning", flush=True)
    return hot_loop(time.monotonic() + seconds)


@task(timeout=0.3)
def stubborn(gate: str) -> str:
    """Ignore cancellation: run on past the 0.3 s timeout until GATE (a file) exists."""
    deadline = time.monotonic() + HANG_SECONDS
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(TICK)
    return "done"


@task
async def block_loop(gate: str) -> str:
    """Block the app's event loop (time.sleep on it) until GATE (a file) exists."""
    print("blocking", flush=True)
    deadline = time.monotonic() + HANG_SECONDS
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(TICK)  # on purpose: a blocking call inside a coroutine
    return "unblocked"


# -- what stats should see ---------------------------------------------------------------------


@task
def hold_files(count: int) -> int:
    """Open COUNT files and keep them open."""
    for _ in range(count):
        _held.append(open(os.devnull))  # noqa: SIM115  (kept open on purpose)
    return count


@task
def start_threads(count: int) -> list[str]:
    """Start COUNT named threads that wait forever."""
    release = threading.Event()
    _held.append(release)
    names = []
    for i in range(count):
        t = threading.Thread(
            target=parked_thread_body, args=(release,), name=f"parked-{i}", daemon=True
        )
        t.start()
        names.append(t.name)
    return names


@task
def allocate(mib: int) -> int:
    """Hold MIB mebibytes, every page written."""
    _held.append(b"x" * (mib << 20))
    return mib


@task
def make_markers(count: int) -> int:
    """Hold COUNT Marker objects."""
    _held.append([Marker() for _ in range(count)])
    return count


@task
def collect() -> list[int]:
    """Run a full collection; the collections per generation after it."""
    gc.collect()
    return [s["collections"] for s in gc.get_stats()]


@task
def emit_debug(marker: str) -> None:
    """Log MARKER at debug level through structlog (on the logger "introapp")."""
    structlog.get_logger("introapp").debug(marker)


# -- the app -----------------------------------------------------------------------------------


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_log_level,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


async def wait_for_stop(stop: asyncio.Event) -> None:
    await stop.wait()


async def amain() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    agent = app_agent.start(app="introapp")
    waiter = asyncio.create_task(wait_for_stop(stop), name="intro-waiter")
    print(f"READY {agent.node}", flush=True)
    await waiter
    agent.stop()


def main() -> None:
    configure_logging()
    known = threading.Thread(target=known_thread_body, name="intro-known")
    known.start()
    try:
        if os.environ.get("INTROAPP_LOOP"):
            asyncio.run(amain())
            return
        agent = app_agent.start(app="introapp")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        print(f"READY {agent.node}", flush=True)
        stop.wait()
        agent.stop()
    finally:
        _known_stop.set()
        known.join()


if __name__ == "__main__":
    main()
