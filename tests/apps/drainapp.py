"""A host application for the drain tests: on_drain/on_resume hooks that leave a trace in a
file, a hook that fails while a file exists, and a task that runs until a file appears.

Run as ``python drainapp.py``; it reads RPCCTL_NODE and DRAINAPP_DIR, starts the agent,
prints ``READY <node>`` on stdout and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from serving import serve

import app_agent
from app_agent import task

DIR = Path(os.environ.get("DRAINAPP_DIR", "."))
TRACE = DIR / "hooks.log"
"""One line per hook run: ``drain consumer``, ``drain async``, ``resume consumer``."""
FAIL = DIR / "fail"
"""While this file exists, the flaky hooks raise (``block``: slow_drain waits)."""
TICK = 0.01


def _note(line: str) -> None:
    with TRACE.open("a") as f:
        f.write(line + "\n")


@app_agent.on_drain
def stop_consumer() -> None:
    _note("drain consumer")


@app_agent.on_drain
async def close_listener() -> None:
    await asyncio.sleep(0)
    _note("drain async")


@app_agent.on_drain
def flaky_drain() -> None:
    if FAIL.exists():
        raise RuntimeError("queue broker unreachable")


@app_agent.on_drain
def slow_drain() -> None:
    """While the file ``block`` exists, wait (a hook that takes its time, or hangs)."""
    if (DIR / "block").exists():
        _note("drain blocked")
        while (DIR / "block").exists():
            time.sleep(TICK)


@app_agent.on_resume
def start_consumer() -> None:
    _note("resume consumer")


@app_agent.on_resume
def flaky_resume() -> None:
    if FAIL.exists():
        raise RuntimeError("queue broker unreachable")


@task
def hold(name: str) -> str:
    """Run until the file NAME appears in DRAINAPP_DIR."""
    while not (DIR / name).exists():
        time.sleep(TICK)
    return "released"


if __name__ == "__main__":
    serve("drainapp")
