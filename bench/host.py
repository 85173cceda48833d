"""A host process with the agent embedded, for the benchmark.

python host.py NODE agent   start the agent, print RSS before/after, serve until killed
python host.py NODE spin S  count loop iterations for S seconds, agent running; print them
python host.py NODE bare S  the same loop without any agent
"""

from __future__ import annotations

import os
import sys
import time


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def private_kib() -> int:
    """Memory this process alone holds (shared libraries' pages excluded): USS."""
    total = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def spin(seconds: float) -> int:
    count = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            count += 1
    return count


def many(directory: str, count: int) -> None:
    """Agents for a fleet: the public start() allows one per process, so this uses the
    Agent class directly (the server side is the same code)."""
    import app_agent
    from app_agent import config

    agents = []
    for i in range(count):
        agent = app_agent.Agent(config.load(f"unix:{directory}/{i}.sock", app=f"a{i}"))
        agent.serve()
        agents.append(agent)
    print(f"LISTENING {time.time():.6f}", flush=True)
    sys.stdin.read()
    for agent in agents:
        agent.stop()


def main() -> None:
    node, mode = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if mode == "webhost":
        # What a web service has loaded anyway before it starts the agent.
        import asyncio  # noqa: F401
        import inspect  # noqa: F401
        import json  # noqa: F401
        import logging  # noqa: F401
        import ssl  # noqa: F401

        mode = "agent"
    before, before_private = rss_kib(), private_kib()
    if mode == "floor":  # only the libraries the agent needs, for comparison
        import rpyc  # noqa: F401
        import structlog  # noqa: F401

        print(f"FLOOR {rss_kib() - before} {private_kib() - before_private}", flush=True)
        return
    if mode == "bare":
        print(f"COUNT {spin(float(sys.argv[3]))}", flush=True)
        return
    if mode == "many":
        many(node, int(sys.argv[3]))
        return
    import app_agent

    agent = app_agent.start(node=node, tasks=["bench_tasks"], app="bench-host")
    print(f"LISTENING {time.time():.6f} {agent.node}", flush=True)
    after = rss_kib()
    print(f"RSS {before} {after}", flush=True)
    if mode == "spin":
        print(f"COUNT {spin(float(sys.argv[3]))}", flush=True)
        agent.stop()
        return
    sys.stdin.read()  # serve until the benchmark closes our stdin
    print(f"RSS_SERVED {rss_kib()} {private_kib() - before_private}", flush=True)
    agent.stop()


if __name__ == "__main__":
    main()
