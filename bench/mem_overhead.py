"""What `rpcctl mem` costs the host while it traces: CPU and resident memory.

    python bench/mem_overhead.py [--rounds N] [--seconds S] [--group-by line|file|traceback]
                                 [--app-traces FRAMES]

The host runs its agent and, on its main thread, a request-like loop for S seconds: parse a
JSON body, build a reply, serialise it, keep the last 20,000 replies (so tracemalloc holds
traces, as it would for a real app's caches). It runs alternately without and with a
diagnosis (asked through the client API, as an operator's `rpcctl mem` would be) and prints
one JSON object: the median throughputs and the slowdown (1 - with / without), the extra
CPU the process spends per unit of work while traced (the snapshots included; unlike wall
time, this does not count time lost to other processes), and what tracing holds in memory:
tracemalloc's own bytes and the growth of the host's RSS from before the diagnosis to its
end, with the time the snapshots took. With ``--app-traces FRAMES`` the host starts
tracemalloc itself before each diagnosis (as PYTHONTRACEMALLOC=FRAMES would), so `mem`
compares without starting or stopping it: the cost of tracing with that many frames.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

RPCCTL = str(Path(sys.executable).parent / "rpcctl")
KEPT = 20_000
BODY = json.dumps({"user": 42, "items": [{"sku": f"A-{i}", "qty": i % 5} for i in range(20)]})


def serve(seconds: float, kept: collections.deque[str]) -> tuple[float, float]:
    """Request-like work for *seconds*: (requests per wall second, process CPU seconds per
    thousand requests, the diagnosis's own CPU included)."""
    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(20):
            request = json.loads(BODY)
            total = sum(item["qty"] for item in request["items"])
            reply = {
                "user": request["user"],
                "total": total,
                "skus": [i["sku"] for i in request["items"]],
            }
            kept.append(json.dumps(reply))
            count += 1
    wall = time.perf_counter() - started
    return count / wall, (time.process_time() - cpu) / count * 1e3


def wait_for_tracing() -> None:
    deadline = time.monotonic() + 30
    while not tracemalloc.is_tracing():
        if time.monotonic() > deadline:
            msg = "rpcctl mem did not start tracing within 30 s"
            raise RuntimeError(msg)
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--group-by", default="line", choices=("line", "file", "traceback"))
    parser.add_argument("--app-traces", type=int, metavar="FRAMES")
    args = parser.parse_args()

    import app_agent

    work = tempfile.mkdtemp(prefix="rpcctl-bench-", dir="/tmp")
    agent = app_agent.start(node=f"unix:{work}/agent.sock", app="mem-bench")
    kept: collections.deque[str] = collections.deque(maxlen=KEPT)
    try:
        serve(min(args.seconds, 0.3), kept)  # warm up, and fill the kept replies
        bare: list[tuple[float, float]] = []
        traced: list[tuple[float, float]] = []
        results: list[dict[str, Any]] = []
        command = [RPCCTL, "-n", agent.node, "mem", "--json", "--seconds", str(args.seconds)]
        for _ in range(args.rounds):
            bare.append(serve(args.seconds, kept))
            if args.app_traces:
                tracemalloc.start(args.app_traces)
            asking = subprocess.Popen(
                [*command, "--top", "5", "--group-by", args.group_by],
                stdout=subprocess.PIPE,
                text=True,
            )
            # The diagnosis starts once rpcctl has connected: spin from then on.
            wait_for_tracing()
            traced.append(serve(args.seconds, kept))
            out, _ = asking.communicate()
            results.append(json.loads(out)["result"])
            if args.app_traces:
                tracemalloc.stop()
    finally:
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)
    without = statistics.median(r[0] for r in bare)
    with_tracing = statistics.median(r[0] for r in traced)
    overheads = [r["overhead"] for r in results]
    print(
        json.dumps(
            {
                "group_by": args.group_by,
                "frames": results[0]["tracing"]["frames"],
                "already": results[0]["tracing"]["already"],
                "rounds": args.rounds,
                "seconds": args.seconds,
                "without": without,
                "with": with_tracing,
                "slowdown": 1 - with_tracing / without,
                "cpu_per_work": statistics.median(r[1] for r in traced)
                / statistics.median(r[1] for r in bare)
                - 1,
                "tracemalloc_bytes": statistics.median(o["tracemalloc_bytes"] for o in overheads),
                "rss_growth_bytes": max(
                    o["rss_during_bytes"] - o["rss_before_bytes"] for o in overheads
                ),
                "snapshots_s": statistics.median(o["snapshots_s"] for o in overheads),
                "cpus": os.cpu_count(),
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
