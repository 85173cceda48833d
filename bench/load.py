"""One load client: a kept connection, calls for DURATION seconds from START, latencies out.

python load.py NODE START DURATION   prints one JSON list of latencies in microseconds
"""

from __future__ import annotations

import json
import sys
import time

import rpcctl


def main() -> None:
    node, start, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    latencies: list[float] = []
    with rpcctl.connect(node) as app:
        app.call("bench_tasks.noop")
        while time.time() < start:
            time.sleep(0.001)
        end = start + duration
        while True:
            t0 = time.perf_counter()
            app.call("bench_tasks.noop")
            latencies.append((time.perf_counter() - t0) * 1e6)
            if time.time() > end:  # at least one call each, even on a crowded machine
                break
    print(json.dumps(latencies))


if __name__ == "__main__":
    main()
