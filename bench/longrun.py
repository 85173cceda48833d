"""A long run against a live agent: what the benchmark's row 10 and the test of flat
resources (tests/test_sick_longrun.py) both run.

    python longrun.py NODE PID TASK [CALLS] [CONNECTIONS]

Measures the agent's process (PID, on this host) from /proc: its descriptors and threads
while idle, then its RSS after a warm-up (RPyC loaded, a few jobs run); then CALLS calls of
TASK on one kept connection (default 20,000) and CONNECTIONS short connections (default
300) that each run TASK as a job; then waits up to 15 s for descriptors and threads to be
back to what they were. Prints one JSON object with the figures.
"""

from __future__ import annotations

import json
import os
import sys
import time

import rpcctl

SETTLE = 15.0
"""Seconds descriptors and threads may take to come back (idle job workers exit after 5)."""


def status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open descriptors of process *pid*."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "VmRSS":
                found["rss"] = int(value.split()[0]) * 1024
            elif key == "Threads":
                found["threads"] = int(value)
    found["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return found


def settle(pid: int, fds: int, threads: int, deadline: float) -> dict[str, int]:
    """The process's status once its descriptors and threads are back to *fds* and
    *threads*, or at *deadline*."""
    while True:
        now = status(pid)
        if (now["fds"] <= fds and now["threads"] <= threads) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


def main() -> None:
    node, pid, task = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    calls = int(sys.argv[4]) if len(sys.argv) > 4 else 20_000
    connections = int(sys.argv[5]) if len(sys.argv) > 5 else 300
    idle = status(pid)
    for _ in range(5):  # warm-up: RPyC loaded, the job machinery used once
        with rpcctl.connect(node) as app:
            app.run(task)
            for _ in range(100):
                app.call(task)
    warm = settle(pid, idle["fds"], idle["threads"], time.monotonic() + SETTLE)
    started = time.monotonic()
    with rpcctl.connect(node) as app:
        for _ in range(calls):
            app.call(task)
    kept_s = time.monotonic() - started
    started = time.monotonic()
    for _ in range(connections):
        with rpcctl.connect(node) as app:
            app.run(task)
    short_s = time.monotonic() - started
    loaded = status(pid)
    ended = time.monotonic()
    after = settle(pid, idle["fds"], idle["threads"], ended + SETTLE)
    print(
        json.dumps(
            {
                "calls": calls,
                "connections": connections,
                "kept_s": round(kept_s, 3),
                "short_s": round(short_s, 3),
                "idle": idle,
                "warm": warm,
                "loaded": loaded,
                "after": after,
                "settle_s": round(time.monotonic() - ended, 3),
                "rss_growth": after["rss"] - warm["rss"],
            }
        )
    )


if __name__ == "__main__":
    main()
