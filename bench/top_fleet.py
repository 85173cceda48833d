"""`rpcctl top` on a 100-node fleet: how long a refresh takes and whether the screen keeps up.

    python bench/top_fleet.py [--nodes 100] [--agents 4] [--seconds 10] [--interval 1.5]

The fleet: *agents* real agents (each a process with an embedded agent, as in production),
each behind nodes/*agents* addresses (symbolic links to its UNIX socket). Every address is
a node of its own to rpcctl: its own poller thread, its own kept connection, its own calls
(info, stats, health every round), so the client side does exactly what it does for 100
real apps; the agents' side gets 25 nodes' worth of requests each. 100 real agents would
measure the machine (2 cores, ~30 MB each) more than rpcctl top. Each agent answers one
`stats` before the run (see start_agents: what a cold agent's first one costs).

Measured, in this process, with the app run headless under Textual's harness at 80x24:

- first view: seconds from start until every node has answered once;
- round: each node's round (info + stats + health) in seconds, median and p95 over the run;
- redraw: milliseconds one redraw of the screen from the snapshots takes (100 rows);
- loop lag: how late a 50 ms timer fires on the app's event loop while the fleet is polled
  (the interface's responsiveness: keys are handled on that loop), median, p95 and max;
- key: milliseconds from pressing ``s`` to the stack screen being up, and from ``escape``
  to the fleet back.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AGENT = """
import sys, threading, app_agent
agent = app_agent.start(node=sys.argv[1], app="bench-top")
print("LISTENING", flush=True)
sys.stdin.read()
agent.stop()
"""


def start_agents(directory: Path, count: int) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs, sockets = [], []
    for i in range(count):
        socket = directory / f"agent{i}.sock"
        proc = subprocess.Popen(
            [sys.executable, "-c", AGENT, f"unix:{socket}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # the agent logs every call
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")},
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "LISTENING":
            raise SystemExit("an agent did not start")
        procs.append(proc)
        sockets.append(str(socket))
        # A cold agent's first `stats` lists the installed distributions (~120 ms here);
        # 25 first calls at once on one agent would each pay it. A real fleet's agents pay
        # it once each, in parallel on their own machines: paid here before measuring.
        import rpcctl

        with rpcctl.connect(f"unix:{socket}") as conn:
            conn.stats()
    return procs, sockets


def addresses(directory: Path, sockets: list[str], nodes: int) -> list[str]:
    found = []
    for i in range(nodes):
        link = directory / f"n{i:03d}.sock"
        link.symlink_to(sockets[i % len(sockets)])
        found.append(f"unix:{link}")
    return found


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def measure(nodes: list[str], seconds: float, interval: float) -> dict[str, Any]:
    from textual import events

    from rpcctl.top.app import DetailScreen, TopApp
    from rpcctl.top.model import Fleet

    fleet = Fleet(nodes, interval=interval)
    app = TopApp(fleet)
    redraws: list[float] = []
    lags: list[float] = []
    rounds: list[float] = []
    result: dict[str, Any] = {}

    async def main() -> None:
        started = time.monotonic()
        async with app.run_test(size=(80, 24)) as pilot:
            while not all(p.state.up for p in fleet.pollers):
                if time.monotonic() - started > 60:
                    raise SystemExit("the fleet never answered in full")
                await asyncio.sleep(0.01)
            result["first_view_s"] = round(time.monotonic() - started, 2)
            seen: dict[str, float | None] = {}
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                asked = time.monotonic()
                await asyncio.sleep(0.05)
                lags.append((time.monotonic() - asked - 0.05) * 1000)
                for p in fleet.pollers:
                    state = p.state
                    if state.polled_at != seen.get(p.node) and state.round_s is not None:
                        seen[p.node] = state.polled_at
                        rounds.append(state.round_s)
            redraws.extend(t * 1000 for t in app.fleet_screen.redraw_times)
            keys = []
            for _ in range(5):
                # The key as the terminal driver posts it (pilot.press also waits for the
                # whole app to go idle, which would measure the stack screen's fetch).
                pressed = time.perf_counter()
                app.post_message(events.Key("s", "s"))
                while not isinstance(app.screen, DetailScreen):
                    await asyncio.sleep(0.001)
                shown = time.perf_counter()
                app.post_message(events.Key("escape", None))
                while isinstance(app.screen, DetailScreen):
                    await asyncio.sleep(0.001)
                keys.append(((shown - pressed) * 1000, (time.perf_counter() - shown) * 1000))
            result["key_s_ms"] = round(statistics.median(k[0] for k in keys), 1)
            result["key_escape_ms"] = round(statistics.median(k[1] for k in keys), 1)
            result["down_at_end"] = sum(not p.state.up for p in fleet.pollers)
            await pilot.press("q")

    try:
        asyncio.run(main())
    finally:
        fleet.stop()
    result.update(
        {
            "round_s_median": round(statistics.median(rounds), 3),
            "round_s_p95": round(pct(rounds, 0.95), 3),
            "rounds": len(rounds),
            "redraw_ms_median": round(statistics.median(redraws), 2),
            "redraw_ms_p95": round(pct(redraws, 0.95), 2),
            "loop_lag_ms_median": round(statistics.median(lags), 1),
            "loop_lag_ms_p95": round(pct(lags, 0.95), 1),
            "loop_lag_ms_max": round(max(lags), 1),
        }
    )
    return result


def once(nodes: list[str]) -> float:
    """Wall seconds of `rpcctl top --once --json` over the fleet, as a script runs it."""
    exe = Path(sys.executable).parent / "rpcctl"
    args = [a for n in nodes for a in ("-n", n)]
    started = time.perf_counter()
    done = subprocess.run(
        [str(exe), *args, "top", "--once", "--json"], capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - started
    if done.returncode != 0:
        summary = json.loads(done.stdout)["result"]["summary"] if done.stdout else ""
        raise SystemExit(f"top --once exited {done.returncode}: {summary} {done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.5)
    options = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="rpcctl-top-", dir="/tmp"))
    procs, sockets = start_agents(directory, options.agents)
    try:
        nodes = addresses(directory, sockets, options.nodes)
        report = {
            "nodes": options.nodes,
            "agents": options.agents,
            "interval_s": options.interval,
            "once_json_s": round(once(nodes), 2),
            **measure(nodes, options.seconds, options.interval),
        }
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
