"""A host application for the `rpcctl mem` tests: leaks to find, and tracemalloc's state.

Run as ``python memapp.py``; it reads RPCCTL_NODE, starts the agent, prints ``READY <node>``
on stdout and serves until SIGTERM. A leak runs on a thread of its own ("memapp-leak"),
next to a thread that allocates as much and frees it (churn, which must not show).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import tracemalloc
from typing import Any

import app_agent
from app_agent import task

TICK = 0.01
CHUNK = 30_000  # bytes per tick: 3 MB/s at 100 ticks a second
PAYLOAD = json.dumps({"items": list(range(300)), "name": "x" * 100})

_leaked: list[Any] = []
_leaks: list[tuple[threading.Thread, threading.Event]] = []


def leak_bytes() -> None:
    _leaked.append(bytes(CHUNK))  # the planted leak


def leak_through_json() -> None:
    _leaked.append(json.loads(PAYLOAD))  # allocated inside json: the site is still this line


def churn() -> None:
    garbage = [bytes(CHUNK)]  # allocated and freed at once: must not be reported
    garbage.clear()


LEAKS = {"bytes": leak_bytes, "json": leak_through_json}


def run_leak(kind: str, stop: threading.Event) -> None:
    leak = LEAKS[kind]
    while not stop.wait(TICK):
        leak()
        churn()


@task
def start_leak(kind: str = "bytes") -> str:
    """Start leaking on a thread: 3 MB/s of bytes, or parsed JSON documents."""
    if kind not in LEAKS:
        msg = f"unknown leak {kind!r}"
        raise ValueError(msg)
    stop = threading.Event()
    thread = threading.Thread(target=run_leak, args=(kind, stop), name=f"memapp-leak-{kind}")
    thread.daemon = True
    thread.start()
    _leaks.append((thread, stop))
    return thread.name


@task
def stop_leaks() -> int:
    """Stop every leak and free what they held; how many there were."""
    stopped = len(_leaks)
    while _leaks:
        thread, stop = _leaks.pop()
        stop.set()
        thread.join()
    _leaked.clear()
    return stopped


@task
def tracing() -> dict[str, Any]:
    """Whether tracemalloc traces, with how many frames, and the memory it holds."""
    return {
        "tracing": tracemalloc.is_tracing(),
        "frames": tracemalloc.get_traceback_limit(),
        "tracemalloc_bytes": tracemalloc.get_tracemalloc_memory(),
    }


@task
def tracing_in_a_child() -> bool:
    """Fork (as a pre-fork server does) and report whether the child traces."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"1" if tracemalloc.is_tracing() else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    return answer == b"1"


@task
def stop_tracing() -> bool:
    """Stop tracemalloc, as an app may do itself."""
    tracemalloc.stop()
    return tracemalloc.is_tracing()


def main() -> None:
    agent = app_agent.start(app="memapp")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"READY {agent.node}", flush=True)
    stop.wait()
    stop_leaks()
    agent.stop()


if __name__ == "__main__":
    main()
