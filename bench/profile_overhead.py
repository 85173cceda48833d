"""What `rpcctl profile` costs a CPU-bound host: a busy loop with and without the sampler.

    python bench/profile_overhead.py [--rounds N] [--seconds S] [--rate HZ]

The host runs its agent (so the sampler sees the agent's threads as well) and counts loop
iterations on its main thread for S seconds, alternately without and with the agent's
sampler running at HZ. It prints one JSON object: the median throughputs and the slowdown
(1 - with / without: what a host that has the CPU to itself loses), the extra CPU the
process spends per unit of work with the sampler (its own CPU and the GIL hand-offs it
causes; unlike wall time, this does not count time lost to other processes on a busy
machine), and the sampler's own CPU as a share of the profiled time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time


def spin(seconds: float) -> tuple[float, float]:
    """Plain Python work for *seconds*: (iterations per wall second, process CPU seconds per
    million iterations, the sampler's CPU included)."""
    count = 0
    cpu = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            count += 1
    wall = time.perf_counter() - started
    return count / wall, (time.process_time() - cpu) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()

    import threading

    import app_agent
    import rpcctl

    work = tempfile.mkdtemp(prefix="rpcctl-bench-", dir="/tmp")
    agent = app_agent.start(node=f"unix:{work}/agent.sock", app="profile-bench")
    try:
        spin(min(args.seconds, 0.2))  # warm up
        bare: list[tuple[float, float]] = []
        profiled: list[tuple[float, float]] = []
        sampler: list[float] = []
        samples = 0
        # The profile is asked for as an operator would (`rpcctl profile`, through the
        # client API on a thread of this process) while the main thread spins.
        with rpcctl.connect(agent.node) as client:
            for _ in range(args.rounds):
                bare.append(spin(args.seconds))
                results: list[dict[str, object]] = []
                asking = threading.Thread(
                    target=lambda out=results: out.append(client.profile(args.seconds, args.rate))
                )
                asking.start()
                profiled.append(spin(args.seconds))
                asking.join()
                result = results[0]
                sampler.append(float(result["sampler_cpu_s"]) / max(float(result["seconds"]), 1e-9))  # type: ignore[arg-type]
                samples += int(result["samples"])  # type: ignore[call-overload]
    finally:
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)
    without = statistics.median(r[0] for r in bare)
    with_sampler = statistics.median(r[0] for r in profiled)
    cpu_without = statistics.median(r[1] for r in bare)
    cpu_with = statistics.median(r[1] for r in profiled)
    print(
        json.dumps(
            {
                "rate": args.rate,
                "rounds": args.rounds,
                "seconds": args.seconds,
                "without": without,
                "with": with_sampler,
                "slowdown": 1 - with_sampler / without,
                "cpu_per_work": cpu_with / cpu_without - 1,
                "sampler_cpu_share": statistics.median(sampler),
                "samples": samples,
                "cpus": os.cpu_count(),
                "load": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
