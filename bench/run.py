"""rpcctl's benchmark: one table of medians and ratios, every pair measured in the same run.

    python bench/run.py [--quick] [--runs N] [--out FILE]

Whole-process rows alternate their commands run by run (A, B, C, A, B, C, ...), so machine
noise hits all of them alike. Erlang rows need ``erl`` and ``escript``; without them the
rows say so and the rest runs. ``--quick`` uses tiny counts (the test suite runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
RPCCTL = str(Path(sys.executable).parent / "rpcctl")
COOKIE = "rpcctl_bench_cookie"


@dataclass
class Row:
    group: str
    what: str
    value: str
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: str) -> None:
        self.rows.append(Row(*args))
        print(f"  {args[1]}: {args[2]} {args[3] if len(args) > 3 else ''}", file=sys.stderr)

    def markdown(self) -> str:
        lines = [
            "| # | measurement | median | ratio | target | met |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.group} | {r.what} | {r.value} | {r.ratio} | {r.target} | {r.verdict} |"
            for r in self.rows
        ]
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes])


# -- processes ------------------------------------------------------------------------------


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Run *argv* to completion: (wall seconds, CPU seconds, peak RSS KiB). It must exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        msg = f"{argv} exited {proc.returncode}: {err}"
        raise RuntimeError(msg)
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


@contextlib.contextmanager
def background(
    argv: list[str], ready: str | None, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith(ready):
                msg = f"{argv} did not get ready: {line!r}"
                raise RuntimeError(msg)
            READY_LINES[proc.pid] = line
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


READY_LINES: dict[int, str] = {}


def wait_ping(node: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        [RPCCTL, "-n", node, "ping", "--wait", "30"], check=True, stdout=subprocess.DEVNULL, env=env
    )


def med(values: list[float]) -> float:
    return statistics.median(values)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


# -- Erlang -----------------------------------------------------------------------------------


class Erlang:
    """A live Erlang node to ping and call, when erl and escript exist."""

    def __init__(self) -> None:
        self.available = bool(shutil.which("erl") and shutil.which("escript"))
        self.target = f"rpcctl_bench_target@{socket.gethostname().split('.')[0]}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Erlang:
        if not self.available:
            return self
        self.proc = subprocess.Popen(
            [
                "erl",
                "-sname",
                self.target.split("@")[0],
                "-setcookie",
                COOKIE,
                "-noshell",
                "-noinput",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if subprocess.run(self.ping_argv(), capture_output=True).returncode == 0:
                return self
            time.sleep(0.2)
        self.available = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()

    def ping_argv(self) -> list[str]:
        return ["escript", str(HERE / "erlang" / "ping.escript"), self.target, COOKIE]

    def erpc_us(self, n: int) -> float:
        out = subprocess.run(
            ["escript", str(HERE / "erlang" / "erpc.escript"), self.target, COOKIE, str(n)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout.strip())


# -- the rows -------------------------------------------------------------------------------


def whole_processes(report: Report, work: Path, runs: int, erlang: Erlang) -> None:
    """Rows 1 and 2: whole-process ping and rpc against python, bare rpyc and Erlang."""
    agent_node = f"unix:{work}/agent.sock"
    rpyc_path = str(work / "rpyc.sock")
    with (
        background([PY, str(HERE / "host.py"), agent_node, "agent"], "LISTENING"),
        background([PY, str(HERE / "baselines.py"), "rpyc-server", rpyc_path], "READY"),
    ):
        commands: dict[str, list[str]] = {
            "python -c pass": [PY, "-c", "pass"],
            "bare rpyc script (import, connect, call once)": [
                PY,
                str(HERE / "baselines.py"),
                "rpyc-once",
                rpyc_path,
            ],
            "rpcctl ping": [RPCCTL, "-n", agent_node, "ping"],
            "rpcctl rpc (no-op task)": [RPCCTL, "-n", agent_node, "rpc", "bench_tasks.noop"],
        }
        if erlang.available:
            commands["escript net_adm:ping"] = erlang.ping_argv()
        for argv in commands.values():  # warm the page cache
            run_measured(argv)
        samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in commands}
        for _ in range(runs):
            for name, argv in commands.items():
                samples[name].append(run_measured(argv))

    def stats(name: str) -> tuple[float, float, float]:
        rows = samples[name]
        return (
            med([r[0] for r in rows]),
            med([r[1] for r in rows]),
            med([r[2] for r in rows]) / 1024,
        )

    wall = {k: stats(k)[0] for k in samples}
    for name in commands:
        w, cpu, rss = stats(name)
        report.add(
            "1" if name != "rpcctl rpc (no-op task)" else "2",
            f"{name}: wall / CPU / peak RSS",
            f"{ms(w)} / {ms(cpu)} / {rss:.1f} MiB",
        )
    ping = wall["rpcctl ping"]
    python = wall["python -c pass"]
    report.add(
        "1",
        "rpcctl ping ÷ python -c pass",
        f"{ping / python:.2f}x",
        "",
        "≤ 2.5x",
        verdict(ping <= 2.5 * python),
    )
    bare = wall["bare rpyc script (import, connect, call once)"]
    report.add(
        "1",
        "rpcctl ping ÷ bare rpyc script",
        f"{ping / bare:.2f}x",
        "",
        "≤ 1.0x",
        verdict(ping <= bare),
    )
    if erlang.available:
        esc = wall["escript net_adm:ping"]
        report.add(
            "1",
            "rpcctl ping ÷ escript net_adm:ping",
            f"{ping / esc:.2f}x",
            "",
            "≤ 0.3x",
            verdict(ping <= 0.3 * esc),
        )
    else:
        report.add(
            "1",
            "rpcctl ping ÷ escript net_adm:ping",
            "skipped: erl/escript not installed (apt-get install erlang-base)",
        )
    rpc = wall["rpcctl rpc (no-op task)"]
    report.add("2", "rpcctl rpc ÷ bare rpyc script", f"{rpc / bare:.2f}x")
    if erlang.available:
        report.add(
            "2", "rpcctl rpc ÷ escript net_adm:ping", f"{rpc / wall['escript net_adm:ping']:.2f}x"
        )


def kept_connection(report: Report, work: Path, calls: int, erlang: Erlang) -> None:
    """Row 3: one call over a kept connection, against a raw socket echo and erpc:call."""
    sys.path.insert(0, str(HERE))
    import rpyc

    import rpcctl

    node = f"unix:{work}/kept.sock"
    cookie_node = f"unix:{work}/kept-cookie.sock"
    echo_path = str(work / "echo.sock")
    rpyc_path = str(work / "rpyc-kept.sock")
    cookie_env = {**os.environ, "RPCCTL_COOKIE": COOKIE}
    with (
        background([PY, str(HERE / "host.py"), node, "agent"], "LISTENING"),
        background([PY, str(HERE / "host.py"), cookie_node, "agent"], "LISTENING", cookie_env),
        background(
            [PY, str(HERE / "host.py"), "tcp://127.0.0.1:0", "agent"], "LISTENING", cookie_env
        ) as tcp_host,
        background([PY, str(HERE / "baselines.py"), "echo-server", echo_path], "READY"),
        background([PY, str(HERE / "baselines.py"), "rpyc-server", rpyc_path], "READY"),
    ):
        tcp_node = READY_LINES[tcp_host.pid].split()[2]
        app = rpcctl.connect(node)
        app_records = rpcctl.connect(cookie_node, cookie=COOKIE)
        app_tcp = rpcctl.connect(tcp_node, cookie=COOKIE)
        echo = socket.socket(socket.AF_UNIX)
        echo.connect(echo_path)
        bare = rpyc.utils.factory.unix_connect(rpyc_path)
        bare_ping = bare.root.ping

        def call() -> None:
            app.call("bench_tasks.noop")

        def call_records() -> None:
            app_records.call("bench_tasks.noop")

        def call_tcp() -> None:
            app_tcp.call("bench_tasks.noop")

        def roundtrip() -> None:
            echo.sendall(b"x")
            echo.recv(1)

        def bare_call() -> None:
            bare_ping()

        kinds = {
            "call": call,
            "records": call_records,
            "tcp": call_tcp,
            "echo": roundtrip,
            "rpyc": bare_call,
        }
        for fn in kinds.values():
            for _ in range(min(200, calls)):
                fn()
        interleaved: dict[str, list[float]] = {key: [] for key in kinds}
        for _ in range(calls):  # one call of each kind in turn
            for key, fn in kinds.items():
                t0 = time.perf_counter_ns()
                fn()
                interleaved[key].append((time.perf_counter_ns() - t0) / 1000)
        # Back to back: a block of one kind, then the next, alternating rounds, so each kind
        # runs with its server warm (interleaving wakes a different process every call).
        back: dict[str, list[float]] = {key: [] for key in kinds}
        block = max(calls // 10, 5)
        for _ in range(10):
            for key, fn in kinds.items():
                t0 = time.perf_counter_ns()
                for _ in range(block):
                    fn()
                back[key].append((time.perf_counter_ns() - t0) / 1000 / block)
        for client in (app, app_records, app_tcp):
            client.close()
        echo.close()
        bare.close()
    c, e, r = med(interleaved["call"]), med(interleaved["echo"]), med(interleaved["rpyc"])
    rec, tcp = med(interleaved["records"]), med(interleaved["tcp"])
    bc, br = statistics.mean(back["call"]), statistics.mean(back["rpyc"])
    brec, btcp = statistics.mean(back["records"]), statistics.mean(back["tcp"])
    report.add("3", "client API call (no-op task), kept connection", f"{c:.0f} µs")
    report.add(
        "3", "raw Python socket echo (the floor)", f"{e:.0f} µs", f"call ÷ echo {c / e:.1f}x"
    )
    report.add(
        "3", "bare RPyC call of an exposed method", f"{r:.0f} µs", f"call ÷ bare RPyC {c / r:.2f}x"
    )
    report.add(
        "3",
        "call with a cookie: authenticated records (unix:)",
        f"{rec:.0f} µs",
        f"records ÷ plain {rec / c:.2f}x",
    )
    report.add(
        "3",
        "call over tcp:// with a cookie: authenticated records",
        f"{tcp:.0f} µs",
        f"tcp ÷ bare RPyC {tcp / r:.2f}x",
    )
    report.add(
        "3",
        "back to back (means of alternating rounds): call / bare RPyC",
        f"{bc:.0f} / {br:.0f} µs",
        f"{bc / br:.2f}x",
        "≤ 1.5x",
        verdict(bc <= 1.5 * br),
    )
    report.add(
        "3",
        "back to back: call with records (unix:) / over tcp://",
        f"{brec:.0f} / {btcp:.0f} µs",
        f"records ÷ plain {brec / bc:.2f}x",
    )
    if erlang.available:
        erpc = erlang.erpc_us(calls)
        report.add(
            "3",
            "Erlang erpc:call, kept connection",
            f"{erpc:.0f} µs",
            f"call ÷ erpc {c / erpc:.2f}x; back to back {bc / erpc:.2f}x",
            "≤ 1.5x",
            verdict(bc <= 1.5 * erpc),
        )
    else:
        report.add(
            "3",
            "Erlang erpc:call",
            "skipped: erl/escript not installed (apt-get install erlang-base)",
        )


def flood(report: Report, work: Path, pings: int) -> None:
    """Pings with a 1 s timeout while two local processes flood the agent with connections
    that never finish their handshake (bounded in time, loopback only)."""
    node = f"unix:{work}/flood.sock"
    path = node[len("unix:") :]
    with background([PY, str(HERE / "host.py"), node, "agent"], "LISTENING"):
        quiet = [run_timed_ping(node) for _ in range(pings)]
        seconds = max(pings * 0.2, 2.0)
        flooders = [
            subprocess.Popen(
                [PY, str(HERE / "flood.py"), path, str(seconds)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        loud = [run_timed_ping(node) for _ in range(pings)]
        made = sum(int((proc.communicate()[0] or "0").strip() or 0) for proc in flooders)
    ok = [t for t, good in loud if good]
    quiet_ok = [t for t, good in quiet if good]
    report.add(
        "7",
        f"ping --timeout 1 under a connect flood (2 processes, {made / seconds:,.0f} conn/s)",
        f"{ms(med(ok)) if ok else 'none answered'}",
        f"{len(ok)}/{len(loud)} answered; quiet {ms(med(quiet_ok))}",
        "all answer",
        verdict(len(ok) == len(loud)),
    )


def run_timed_ping(node: str) -> tuple[float, bool]:
    start = time.perf_counter()
    result = subprocess.run(
        [RPCCTL, "-n", node, "ping", "--timeout", "1"], capture_output=True, check=False
    )
    return time.perf_counter() - start, result.returncode == 0


def ping_wait(report: Report, work: Path, runs: int) -> None:
    """Row 4: how soon `ping --wait` notices a fresh agent, and the CPU it burns waiting."""
    delays: list[float] = []
    cpu_share: list[float] = []
    # The CPU of starting up and pinging once, to subtract from the waiting run's total.
    with background([PY, str(HERE / "host.py"), f"unix:{work}/up.sock", "agent"], "LISTENING"):
        startup_cpu = med(
            [run_measured([RPCCTL, "-n", f"unix:{work}/up.sock", "ping"])[1] for _ in range(5)]
        )
    for i in range(runs):
        node = f"unix:{work}/wait{i}.sock"
        waiter = subprocess.Popen(
            [RPCCTL, "-n", node, "ping", "--wait", "30"], stdout=subprocess.DEVNULL
        )
        time.sleep(1.0)  # the operator's command waits a while for the app to come up
        with background([PY, str(HERE / "host.py"), node, "agent"], "LISTENING") as host:
            _pid, status, usage = os.wait4(waiter.pid, 0)
            returned = time.time()
            waiter.returncode = os.waitstatus_to_exitcode(status)
        # The host printed LISTENING with the time, right after the agent began to listen.
        listened = float(READY_LINES[host.pid].split()[1])
        delays.append(returned - listened)
        waited = 1.0 + max(returned - listened, 0)
        cpu_share.append(max(usage.ru_utime + usage.ru_stime - startup_cpu, 0) / waited)
    d, c = med(delays), med(cpu_share)
    report.add(
        "4",
        "ping --wait: agent listening → command returns",
        ms(d),
        "",
        "≤ 50 ms",
        verdict(d <= 0.05),
    )
    report.add(
        "4", "ping --wait: CPU while waiting", f"{c * 100:.2f} %", "", "< 5 %", verdict(c < 0.05)
    )


def agent_in_host(report: Report, work: Path, idle_seconds: float, spin_seconds: float) -> None:
    """Row 5: idle CPU, resident memory added, and the host's slowdown under 50 pings/s."""
    node = f"unix:{work}/host.sock"
    with background([PY, str(HERE / "host.py"), node, "agent"], "LISTENING") as host:
        assert host.stdout is not None
        before, after = (int(x) for x in host.stdout.readline().split()[1:3])
        wait_ping(node)
        subprocess.run(
            [RPCCTL, "-n", node, "rpc", "bench_tasks.noop"], check=True, stdout=subprocess.DEVNULL
        )
        cpu0 = proc_cpu(host.pid)
        time.sleep(idle_seconds)
        idle_cpu = proc_cpu(host.pid) - cpu0
        assert host.stdin is not None
        host.stdin.close()
        served_line = host.stdout.readline().split()
        served, served_private = int(served_line[1]), int(served_line[2])
    floor = subprocess.run(
        [PY, str(HERE / "host.py"), node, "floor"], capture_output=True, text=True, check=True
    ).stdout.split()
    report.add(
        "5",
        f"agent idle CPU over {idle_seconds:g} s",
        f"{idle_cpu * 1000:.1f} ms CPU ({idle_cpu / idle_seconds * 100:.3f} %)",
        "",
        "0 (no polling)",
        verdict(idle_cpu < 0.01 * idle_seconds),
    )
    added = (served - before) / 1024
    report.add(
        "5",
        "resident memory the agent adds (started, one call served)",
        f"{added:.1f} MiB RSS, {served_private / 1024:.1f} MiB private",
        f"start only {(after - before) / 1024:.1f} MiB RSS",
        "< 10 MiB",
        verdict(added < 10),
    )
    with background([PY, str(HERE / "host.py"), f"{node}.web", "webhost"], "LISTENING") as web:
        assert web.stdout is not None
        web_before, web_after = (int(x) for x in web.stdout.readline().split()[1:3])
    report.add(
        "5",
        "agent started in a host that already loaded asyncio, ssl, logging (a web app)",
        f"{(web_after - web_before) / 1024:.1f} MiB RSS",
        "",
        "< 10 MiB",
        verdict((web_after - web_before) / 1024 < 10),
    )
    report.add(
        "5",
        "of which importing rpyc and structlog alone (the floor)",
        f"{int(floor[1]) / 1024:.1f} MiB RSS, {int(floor[2]) / 1024:.1f} MiB private",
    )

    bare_counts, loaded_counts = [], []
    for _ in range(3 if spin_seconds >= 2 else 1):
        out = subprocess.run(
            [PY, str(HERE / "host.py"), node, "bare", str(spin_seconds)],
            capture_output=True,
            text=True,
            check=True,
        )
        bare_counts.append(int(out.stdout.split()[-1]))
        with background(
            [PY, str(HERE / "host.py"), node, "spin", str(spin_seconds)], "LISTENING"
        ) as spinner:
            assert spinner.stdout is not None
            spinner.stdout.readline()  # RSS line
            stop = threading.Event()
            pings = threading.Thread(target=ping_at_50_hz, args=(node, stop), daemon=True)
            pings.start()
            count_line = spinner.stdout.readline()
            stop.set()
            pings.join()
            loaded_counts.append(int(count_line.split()[-1]))
    slowdown = 1 - med(loaded_counts) / med(bare_counts)
    report.add(
        "5", "host CPU loop slowdown while the agent answers 50 pings/s", f"{slowdown * 100:.1f} %"
    )


def ping_at_50_hz(node: str, stop: threading.Event) -> None:
    sys.path.insert(0, str(HERE))
    from app_agent import wire
    from rpcctl import _transport

    address = wire.parse_node(node)
    security = _transport.Security()
    next_at = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(Exception):
            _transport.ping(address, 1.0, security)
        next_at += 0.02
        stop.wait(max(next_at - time.monotonic(), 0))


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(report: Report, work: Path, seconds: float) -> None:
    """Row 6: calls per second from 8 concurrent clients, with p50 and p99 latency."""
    node = f"unix:{work}/load.sock"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    with background([PY, str(HERE / "host.py"), node, "agent"], "LISTENING", env=env):
        start = time.time() + 2.0
        clients = [
            subprocess.Popen(
                [PY, str(HERE / "load.py"), node, str(start), str(seconds)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(8)
        ]
        latencies: list[float] = []
        for client in clients:
            out, _ = client.communicate()
            latencies += json.loads(out)
    rate = len(latencies) / seconds
    report.add(
        "6",
        "8 concurrent clients, kept connections: calls/s",
        f"{rate:.0f}/s",
        f"p50 {pct(latencies, 50):.0f} µs, p99 {pct(latencies, 99):.0f} µs",
    )


def fleet_ping(report: Report, work: Path, count: int, runs: int) -> None:
    """Row 7: one `rpcctl ping` of COUNT agents against a single ping, whole processes."""
    directory = work / f"fleet{count}"
    directory.mkdir()
    nodes_file = work / f"fleet{count}.txt"
    nodes_file.write_text("".join(f"unix:{directory}/{i}.sock\n" for i in range(count)))
    with background([PY, str(HERE / "host.py"), str(directory), "many", str(count)], "LISTENING"):
        single = [RPCCTL, "-n", f"unix:{directory}/0.sock", "ping"]
        many = [RPCCTL, "--nodes-file", str(nodes_file), "ping"]
        run_measured(single)
        run_measured(many)
        one_s, all_s = [], []
        for _ in range(runs):
            one_s.append(run_measured(single)[0])
            all_s.append(run_measured(many)[0])
    one, every = med(one_s), med(all_s)
    target = "≤ 2x" if count <= 50 else ""
    report.add(
        "7",
        f"rpcctl ping of {count} agents (one process, --nodes-file)",
        ms(every),
        f"÷ single ping {every / one:.2f}x",
        target,
        verdict(every <= 2 * one) if target else "",
    )


def profiler_overhead(report: Report, rounds: int, seconds: float) -> None:
    """Row 8: what `rpcctl profile` at 100 Hz costs a CPU-bound host (bench/profile_overhead.py)."""
    out = subprocess.run(
        [PY, str(HERE / "profile_overhead.py"), "--rounds", str(rounds), "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(out.stdout)
    slowdown = found["slowdown"]
    report.add(
        "8",
        "profiler at 100 Hz: CPU-bound host loop slowdown",
        f"{slowdown * 100:.1f} %",
        f"sampler {found['sampler_cpu_share'] * 100:.1f} % of one core",
        "≤ 5 %",
        verdict(slowdown <= 0.05),
    )
    report.add(
        "8",
        "profiler at 100 Hz: extra CPU per unit of the host's work",
        f"{found['cpu_per_work'] * 100:.1f} %",
        f"load average {found['load']:.1f} on {found['cpus']} cores",
    )


def mem_overhead(report: Report, rounds: int, seconds: float) -> None:
    """Row 9: what `rpcctl mem` costs a host while it traces (bench/mem_overhead.py): its
    request-like loop's throughput and CPU, tracemalloc's memory and the host's RSS."""
    argv = [PY, str(HERE / "mem_overhead.py"), "--rounds", str(rounds), "--seconds", str(seconds)]
    variants = {
        "line": ["--group-by", "line"],
        "traceback": ["--group-by", "traceback"],
        "app traces": ["--app-traces", "1"],  # PYTHONTRACEMALLOC=1: mem only compares
    }
    found: dict[str, Any] = {}
    for name, options in variants.items():
        out = subprocess.run([*argv, *options], capture_output=True, text=True, check=True)
        found = json.loads(out.stdout)
        what = (
            f"mem --group-by {name} ({found['frames']} frames)"
            if not found["already"]
            else f"mem on an app tracing {found['frames']} frame (PYTHONTRACEMALLOC=1)"
        )
        report.add(
            "9",
            f"{what}: allocating host loop while traced",
            f"{found['with']:,.0f} req/s",
            f"÷ untraced {found['with'] / found['without']:.3f}x, "
            f"CPU per request {found['cpu_per_work'] + 1:.1f}x",
        )
        if name == "line":
            report.add(
                "9",
                "mem --group-by line: memory while tracing",
                f"tracemalloc {found['tracemalloc_bytes'] / 1024:.0f} KiB",
                f"host RSS +{found['rss_growth_bytes'] / 1024:.0f} KiB, "
                f"snapshots {found['snapshots_s'] * 1000:.0f} ms",
            )


def long_run(report: Report, work: Path, calls: int, connections: int) -> None:
    """Row 10: a long run (bench/longrun.py, also run by the tests): CALLS calls on one kept
    connection and CONNECTIONS short ones each running a job; the agent's RSS growth, and
    its descriptors and threads once they settle."""
    node = f"unix:{work}/long.sock"
    env = dict(os.environ, PYTHONPATH=str(HERE))
    with background([PY, str(HERE / "host.py"), node, "agent"], "LISTENING", env=env) as host:
        argv = [PY, str(HERE / "longrun.py"), node, str(host.pid), "bench_tasks.noop"]
        out = subprocess.run(
            [*argv, str(calls), str(connections)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
    found = json.loads(out.stdout)
    idle, after = found["idle"], found["after"]
    growth = found["rss_growth"] / (1 << 20)
    flat = after["fds"] <= idle["fds"] and after["threads"] <= idle["threads"]
    report.add(
        "10",
        f"long run: {calls:,} calls on one connection + {connections} short connections",
        f"RSS +{growth:.2f} MiB",
        f"fds {idle['fds']}→{after['fds']}, threads {idle['threads']}→{after['threads']} "
        f"{found['settle_s']:.1f} s after; {calls / found['kept_s']:,.0f} calls/s",
        "≤ 8 MiB; fds, threads back ≤ 15 s",
        verdict(growth <= 8 and flat),
    )


def history_cost(report: Report, calls: int, rounds: int, pg: str | None) -> None:
    """Row 11: what the durable job history costs a kept-connection no-op call (bench/
    history_cost.py): hosts with history off, SQLite and (with --pg) PostgreSQL, alternating."""
    argv = [PY, str(HERE / "history_cost.py"), "--calls", str(calls), "--rounds", str(rounds)]
    out = subprocess.run(
        [*argv, *(["--pg", pg] if pg else [])], capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout)
    report.add(
        "11",
        "job history: record_job() on the call's thread",
        f"{found['record_us_median']:.2f} µs",
        f"÷ call {found['record_us_median'] / found['call_us_no_history'] * 100:.2f} %",
    )
    for store in ("sqlite", "postgresql"):
        if f"call_us_{store}" not in found:
            continue
        ratio = found[f"call_{store}_ratio"]
        report.add(
            "11",
            f"job history ({store}): kept-connection no-op call",
            f"{found[f'call_us_{store}']:.0f} µs",
            f"÷ history off {ratio:.3f}x; host CPU {found[f'host_cpu_{store}_vs_none']}",
            "≤ 1.05x",
            verdict(ratio <= 1.05),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, for the tests")
    parser.add_argument("--runs", type=int, help="whole-process runs per command")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--pg", help="PostgreSQL URL: the job history row measures it too")
    args = parser.parse_args()
    runs = args.runs or (2 if args.quick else 20)
    report = Report()
    report.notes.append(
        f"{time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, {os.cpu_count()} cores, "
        f"{'quick mode' if args.quick else f'{runs} runs per whole-process command'}"
    )
    work = Path(tempfile.mkdtemp(prefix="rpcctl-bench-", dir="/tmp"))
    try:
        with Erlang() as erlang:
            if not erlang.available:
                report.notes.append(
                    "Erlang rows skipped: erl/escript not found (apt-get install erlang-base)"
                )
            whole_processes(report, work, runs, erlang)
            kept_connection(report, work, 50 if args.quick else 5000, erlang)
        ping_wait(report, work, 1 if args.quick else 5)
        agent_in_host(report, work, 0.5 if args.quick else 10.0, 0.3 if args.quick else 3.0)
        throughput(report, work, 0.5 if args.quick else 5.0)
        fleet_ping(report, work, 5 if args.quick else 50, 2 if args.quick else 10)
        if not args.quick:  # 1,000 real agents in one process (a gate thread each)
            fleet_ping(report, work, 1000, 3)
        flood(report, work, 3 if args.quick else 30)
        profiler_overhead(report, 2 if args.quick else 10, 0.2 if args.quick else 1.0)
        mem_overhead(report, 1 if args.quick else 5, 0.2 if args.quick else 2.0)
        long_run(report, work, 500 if args.quick else 20_000, 20 if args.quick else 300)
        history_cost(report, 400 if args.quick else 40_000, 4 if args.quick else 40, args.pg)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = report.markdown()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
