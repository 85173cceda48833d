"""What the durable job history costs a call: `record()` on the caller's thread, and a whole
kept-connection call with and without a history store.

    python bench/history_cost.py [--calls N] [--rounds R] [--pg URL]

1. In this process: µs per ``store.record_job(job)`` (what the agent's job table does when
   a job ends: build its record, queue it) into a SQLite store whose writer is running, and
   the one record that starts the writer after it went idle (a thread start).
2. Host processes, each an agent with a no-op task: ``history=off`` (the baseline), SQLite,
   and with ``--pg`` PostgreSQL. Back-to-back kept-connection calls in blocks, the kinds in
   a rotating order over R rounds; each block ends with a ``history`` request (it flushes
   the store, so the block's writes are counted in it). The medians of the blocks' means,
   the ratio to ``off``, and the host's CPU per call (all its threads: the writer's too).

Prints one JSON object; the target is ≤ 5 % of a kept-connection call.
"""

from __future__ import annotations

import argparse
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

HERE = Path(__file__).resolve().parent


def host(node: str, spec: str) -> None:
    """An app with its agent, keeping its history in *spec* (``off``: none)."""
    sys.path.insert(0, str(HERE))
    import app_agent

    agent = app_agent.start(node=node, tasks=["bench_tasks"], app="bench-history", history=spec)
    print("LISTENING", flush=True)
    sys.stdin.read()  # serve until the benchmark closes our stdin
    store = agent.state.jobs.history
    store.flush(30)
    if spec != "off":
        print(f"written {store.written}, dropped {store.dropped}", flush=True)  # type: ignore[union-attr]
    agent.stop()


def record_cost(work: Path, calls: int) -> dict[str, float]:
    """µs per record() of a finished job, the writer running; and a record that starts it."""
    from app_agent._jobs import history as _history
    from app_agent._jobs.locks import MemoryLocks
    from app_agent._jobs.table import JobTable
    from app_agent._registry import Registry

    sys.path.insert(0, str(HERE))
    import bench_tasks

    registry = Registry()
    task = registry.add(bench_tasks.noop)
    table = JobTable(MemoryLocks())
    job = table.create(task, "uid=1000 pid=4242")
    job.audit = {"caller": "uid=1000 pid=4242", "identity": None, "argument_sizes": {}}
    table.start(job, (), {}, inline=True)
    store = _history.open_store(f"sqlite:{work / 'cost.sqlite3'}", app="bench", node="unix:/b")
    assert isinstance(store, _history.HistoryStore)
    timings: list[float] = []
    burst = 100  # then the writer catches up (untimed): the queue never fills
    for _ in range(max(calls // burst, 1)):
        for _ in range(burst):
            t0 = time.perf_counter_ns()
            store.record_job(job)
            timings.append((time.perf_counter_ns() - t0) / 1000)
        store.flush(30)
    starts: list[float] = []
    store._idle = 0.01
    for _ in range(20):
        while store._writing:  # wait for the idle writer to exit
            time.sleep(0.005)
        t0 = time.perf_counter_ns()
        store.record_job(job)
        starts.append((time.perf_counter_ns() - t0) / 1000)
        store.flush(30)
    store.close()
    return {
        "record_us_median": round(statistics.median(timings), 2),
        "record_us_mean": round(statistics.mean(timings), 2),
        "record_us_p99": round(sorted(timings)[int(len(timings) * 0.99)], 2),
        "record_starting_the_writer_us_median": round(statistics.median(starts), 1),
        "records_timed": len(timings),
    }


def call_cost(work: Path, calls: int, rounds: int, pg: str | None) -> dict[str, Any]:
    """Mean µs of a kept-connection call to hosts without and with a history store."""
    import rpcctl

    specs = {"none": "off", "sqlite": f"sqlite:{work / 'calls.sqlite3'}"}
    if pg:
        specs["postgresql"] = pg
    hosts: dict[str, subprocess.Popen[str]] = {}
    clients: dict[str, Any] = {}
    try:
        for name, spec in specs.items():
            node = f"unix:{work}/{name}.sock"
            hosts[name] = subprocess.Popen(
                [sys.executable, __file__, "host", node, spec],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # the agents' audit lines
                text=True,
            )
            stdout = hosts[name].stdout
            assert stdout is not None
            line = stdout.readline()
            if not line.startswith("LISTENING"):
                msg = f"the {name} host did not start: {line!r}"
                raise RuntimeError(msg)
            clients[name] = rpcctl.connect(node)
        for client in clients.values():  # warm up
            for _ in range(200):
                client.call("bench_tasks.noop")
        means: dict[str, list[float]] = {name: [] for name in specs}
        cpu = dict.fromkeys(specs, 0.0)  # the host's CPU seconds during its blocks
        database = dict.fromkeys(specs, 0.0)  # the PostgreSQL server's (on this machine)
        block = max(calls // rounds, 10)
        names = list(clients)
        for round_ in range(rounds):
            # Each round in another order: no kind always runs right after another.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                client = clients[name]
                cpu0 = process_cpu(hosts[name].pid)
                db0 = postgres_cpu()
                t0 = time.perf_counter_ns()
                for _ in range(block):
                    client.call("bench_tasks.noop")
                means[name].append((time.perf_counter_ns() - t0) / 1000 / block)
                if name != "none":
                    # history flushes the store first: the block's records are written
                    # (and their CPU counted) before the next block begins.
                    client.history(limit=1)
                cpu[name] += process_cpu(hosts[name].pid) - cpu0
                database[name] += postgres_cpu() - db0
        for client in clients.values():
            client.close()
        recorded = {}
        for name, proc in hosts.items():
            out, _ = proc.communicate("", timeout=60)
            if name != "none":
                recorded[name] = out.strip().splitlines()[-1]
    finally:
        for proc in hosts.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # Medians of the blocks' means: a block that another process on the host slowed down
    # (a shared machine) does not move them.
    base = statistics.median(means["none"])
    base_cpu = cpu["none"] / (block * rounds) * 1e6
    result: dict[str, Any] = {
        "call_us_no_history": round(base, 1),
        "host_cpu_us_per_call_no_history": round(base_cpu, 1),
        "calls_per_kind": block * rounds,
    }
    for name in specs:
        if name == "none":
            continue
        with_store = statistics.median(means[name])
        result[f"call_us_{name}"] = round(with_store, 1)
        result[f"call_{name}_ratio"] = round(with_store / base, 4)
        result[f"call_{name}_vs_none"] = f"{with_store / base - 1:+.1%}"
        host_cpu = cpu[name] / (block * rounds) * 1e6
        result[f"host_cpu_us_per_call_{name}"] = round(host_cpu, 1)
        result[f"host_cpu_{name}_ratio"] = round(host_cpu / base_cpu, 4)
        result[f"host_cpu_{name}_vs_none"] = f"{host_cpu / base_cpu - 1:+.1%}"
        result[f"host_{name}"] = recorded[name]
        if name == "postgresql":
            result["database_cpu_us_per_call_postgresql"] = round(
                database[name] / (block * rounds) * 1e6, 1
            )
    return result


def postgres_cpu() -> float:
    """CPU seconds the PostgreSQL server's processes on this machine have used (those alive
    now): what the history's inserts cost the database, when it shares the host."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            total += process_cpu(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system) process *pid* has used, all its threads together."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "host":
        host(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--pg", help="also a host recording into this PostgreSQL URL")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rpcctl-bench-", dir="/tmp"))
    try:
        result = record_cost(work, args.calls)
        result.update(call_cost(work, args.calls, args.rounds, args.pg))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["record_vs_call"] = f"{result['record_us_mean'] / result['call_us_no_history']:.2%}"
    result["target"] = "<= 5% of a kept-connection call"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
