"""Fleets: many real agents at once, with dead, failing and slow nodes, and discovery."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import rpcctl
from conftest import DEADLINE, SAMPLEAPP, AppProcess, rpcctl_executable, run_rpcctl
from rpcctl import _nodes, fleet

FLEET = 20
NODE_DEADLINE = 3.0


def start_many(envs: list[dict[str, str]], nodes: list[str]) -> list[AppProcess]:
    """Start every app at once, then wait for each: the start-ups overlap."""
    apps = [
        AppProcess(SAMPLEAPP, node=n, env=e, ready_line=None)
        for n, e in zip(nodes, envs, strict=True)
    ]
    for app in apps:
        app.wait_for_line("READY")
    return apps


@pytest.fixture(scope="module")
def fleet_dir(module_tmp: Path) -> Path:
    return module_tmp


@pytest.fixture(scope="module")
def agents(fleet_dir: Path) -> Iterator[list[AppProcess]]:
    roles = {0: "raise", 1: "slow"}
    envs = [{"SAMPLEAPP_NAME": f"n{i}", "SAMPLEAPP_ROLE": roles.get(i, "")} for i in range(FLEET)]
    nodes = [f"unix:{fleet_dir}/n{i}.sock" for i in range(FLEET)]
    apps = start_many(envs, nodes)
    try:
        yield apps
    finally:
        for app in apps:
            app.close()


@pytest.fixture(scope="module")
def black_hole(fleet_dir: Path) -> Iterator[str]:
    """A socket that accepts connections into its backlog and never answers."""
    path = fleet_dir / "hole.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen(64)
    yield f"unix:{path}"
    sock.close()


@pytest.fixture(scope="module")
def all_nodes(agents: list[AppProcess], fleet_dir: Path, black_hole: str) -> list[str]:
    return [a.node for a in agents] + [f"unix:{fleet_dir}/nothing.sock", black_hole]


def fleet_args(nodes: list[str]) -> list[str]:
    return [arg for node in nodes for arg in ("-n", node)]


def test_rpc_on_a_fleet_reports_each_node(all_nodes: list[str]) -> None:
    result = run_rpcctl(
        *fleet_args(all_nodes), "rpc", "--json", "--timeout", str(NODE_DEADLINE), "sampleapp.whoami"
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_node = {line["node"]: line for line in lines[:-1]}
    summary = lines[-1]
    assert len(by_node) == FLEET + 2
    for i in range(2, FLEET):
        assert by_node[all_nodes[i]]["result"] == f"n{i}"
    assert by_node[all_nodes[0]]["error"]["kind"] == "task_failed"
    assert "RuntimeError: this node is broken" in by_node[all_nodes[0]]["error"]["message"]
    assert by_node[all_nodes[1]]["error"]["kind"] == "timeout"  # outlived the deadline
    assert by_node[all_nodes[-2]]["error"]["kind"] == "unreachable"  # nothing listens
    assert by_node[all_nodes[-1]]["error"]["kind"] == "timeout"  # black-holed
    assert (summary["ok"], summary["failed"]) == (FLEET - 2, 4)
    # Two timeouts, one unreachable, one raised: the most frequent failure decides.
    assert result.returncode == summary["exit_code"] == 4
    # Nodes ran side by side: two blocking nodes in a row would take twice the deadline.
    assert summary["duration_s"] < 2 * NODE_DEADLINE


def test_min_ok_decides_the_exit_code(all_nodes: list[str]) -> None:
    args = [*fleet_args(all_nodes), "rpc", "--timeout", "1"]
    assert run_rpcctl(*args, "--min-ok", str(FLEET - 2), "sampleapp.whoami").returncode == 0
    assert run_rpcctl(*args, "--min-ok", str(FLEET - 1), "sampleapp.whoami").returncode == 4


def test_fleet_table_and_ping(all_nodes: list[str]) -> None:
    result = run_rpcctl(*fleet_args(all_nodes), "ping", "--timeout", "1")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "OUTCOME", "TIME", "RESULT", "/", "ERROR"]
    assert sum(" ok " in line for line in lines[1:-1]) == FLEET
    assert lines[-1].startswith(f"{FLEET}/{FLEET + 2} nodes ok in ")
    assert "1 timeout, 1 unreachable" in lines[-1]
    assert result.returncode == 3  # one unreachable, one timeout: the lower code wins a tie


def test_info_and_tasks_on_a_fleet(agents: list[AppProcess]) -> None:
    nodes = [a.node for a in agents[2:5]]
    info = run_rpcctl(*fleet_args(nodes), "info", "--json")
    assert info.returncode == 0
    rows = [json.loads(line) for line in info.stdout.splitlines()[:-1]]
    assert {r["result"]["pid"] for r in rows} == {a.proc.pid for a in agents[2:5]}
    tasks = run_rpcctl(*fleet_args(nodes), "tasks", "--json")
    assert tasks.returncode == 0


def test_one_runs_on_the_first_that_answers(agents: list[AppProcess], fleet_dir: Path) -> None:
    nodes = [f"unix:{fleet_dir}/nothing.sock", agents[5].node, agents[6].node]
    result = run_rpcctl(*fleet_args(nodes), "rpc", "--one", "sampleapp.whoami")
    assert result.returncode == 0, result.stderr
    assert result.stdout in ("n5\n", "n6\n")
    assert "running on unix:" in result.stderr


def test_nodes_file(agents: list[AppProcess], fleet_dir: Path) -> None:
    listing = fleet_dir / "nodes.txt"
    listing.write_text("# the web tier\n" + f"{agents[2].node}\n\n{agents[3].node}  # second\n")
    result = run_rpcctl("--nodes-file", str(listing), "rpc", "--json", "sampleapp.whoami")
    assert result.returncode == 0, result.stderr
    results = [json.loads(line).get("result") for line in result.stdout.splitlines()[:-1]]
    assert results == ["n2", "n3"]
    bad = fleet_dir / "bad.txt"
    bad.write_text(f"{agents[2].node}\nnot-an-address\n")
    broken = run_rpcctl("--nodes-file", str(bad), "ping")
    assert broken.returncode == 2
    assert f"{bad}:2: bad node address 'not-an-address'" in broken.stderr


def test_single_node_commands_refuse_a_fleet(agents: list[AppProcess]) -> None:
    result = run_rpcctl("-n", agents[2].node, "-n", agents[3].node, "jobs")
    assert result.returncode == 2
    assert "`jobs` acts on one node" in result.stderr


def test_python_multicall(all_nodes: list[str]) -> None:
    result = rpcctl.multicall(all_nodes, "sampleapp.whoami", timeout=1.0)
    assert result.results == {all_nodes[i]: f"n{i}" for i in range(2, FLEET)}
    assert set(result.bad_nodes) == {all_nodes[0], all_nodes[1], all_nodes[-2], all_nodes[-1]}
    assert isinstance(result.bad_nodes[all_nodes[0]], rpcctl.TaskFailed)
    assert isinstance(result.bad_nodes[all_nodes[-2]], rpcctl.Unreachable)


# -- discovery ------------------------------------------------------------------------------

RESOLVER = """
import socket
_real = socket.getaddrinfo
def getaddrinfo(host, port, *args, **kwargs):
    if host == "fleet.test":
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.%d" % i, int(port)))
                for i in (1, 2, 3)]
    return _real(host, port, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
"""


def test_discovery_through_a_name_with_several_addresses(tmp_path: Path) -> None:
    """A test resolver (sitecustomize) makes fleet.test resolve to three loopback addresses,
    as a headless service's name resolves to its pods."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    cookie = "c" * 40
    nodes = [f"tcp://127.0.0.{i}:{port}" for i in (1, 2, 3)]
    envs = [{"SAMPLEAPP_NAME": f"pod{i}", "RPCCTL_COOKIE": cookie} for i in (1, 2, 3)]
    apps = start_many(envs, nodes)
    (tmp_path / "sitecustomize.py").write_text(RESOLVER)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
        env.update(PYTHONPATH=str(tmp_path), RPCCTL_COOKIE=cookie)
        result = subprocess.run(
            [
                rpcctl_executable(),
                "--discover",
                f"dns:fleet.test:{port}",
                "rpc",
                "--json",
                "sampleapp.whoami",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=DEADLINE * 3,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
        assert {r["node"]: r["result"] for r in rows} == {
            f"tcp://127.0.0.{i}:{port}": f"pod{i}" for i in (1, 2, 3)
        }
    finally:
        for app in apps:
            app.close()


def test_discover_spec_errors() -> None:
    with pytest.raises(rpcctl.ConfigError, match="expected dns:NAME:PORT"):
        _nodes.discover("srv:thing")
    with pytest.raises(rpcctl.ConfigError, match="expected dns:NAME:PORT"):
        _nodes.discover("dns:name-without-port")


def test_discover_keeps_ipv6_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", port, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", port)),
        ]

    monkeypatch.setattr(_nodes.socket, "getaddrinfo", fake)
    assert _nodes.discover("dns+tls:svc.ns.svc.cluster.local:4370") == [
        "tls://[fd00::1]:4370",
        "tls://10.0.0.2:4370",
    ]


def test_detach_needs_one_node(agents: list[AppProcess]) -> None:
    result = run_rpcctl(*fleet_args([a.node for a in agents[2:4]]), "rpc", "--detach", "add(1)")
    assert result.returncode == 2
    assert "--detach starts a job on one node" in result.stderr


def test_fleet_readiness(agents: list[AppProcess]) -> None:
    nodes = [a.node for a in agents[7:9]]
    assert run_rpcctl("-n", nodes[0], "rpc", "sampleapp.ready(False)").returncode == 0
    try:
        result = run_rpcctl(*fleet_args(nodes), "ping", "--ready", "--json")
        rows = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
        assert [r["ok"] for r in rows] == [False, True]
        assert "not ready" in rows[0]["error"]["message"]
        assert result.returncode == 3
    finally:
        run_rpcctl("-n", nodes[0], "rpc", "sampleapp.ready(True)")


# -- ping --wait on a fleet ----------------------------------------------------------------------


def test_fleet_ping_wait_waits_for_every_node(short_tmp: Path) -> None:
    """Right after the apps are started (here: before), `ping --wait` waits for each."""
    nodes = [f"unix:{short_tmp}/late{i}.sock" for i in (1, 2)]
    waiting = subprocess.Popen(
        [rpcctl_executable(), *fleet_args(nodes), "ping", "--wait", str(DEADLINE), "--json"],
        env={k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    apps = [AppProcess(SAMPLEAPP, node=n, ready_line=None) for n in nodes]
    try:
        out, err = waiting.communicate(timeout=DEADLINE * 2)
    finally:
        if waiting.poll() is None:
            waiting.kill()
        for app in apps:
            app.close()
    assert waiting.returncode == 0, out + err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["node"], r["result"]) for r in rows[:-1]] == [(n, "pong") for n in nodes]
    assert rows[-1]["ok"] == 2


def test_fleet_ping_wait_gives_up_per_node(agents: list[AppProcess], fleet_dir: Path) -> None:
    nodes = [agents[2].node, f"unix:{fleet_dir}/never.sock", f"unix:{fleet_dir}/nor.sock"]
    result = run_rpcctl(*fleet_args(nodes), "ping", "--wait", "0.2", "--json")
    assert result.returncode == 3
    rows = [json.loads(line) for line in result.stdout.splitlines()[:-1]]
    assert [r["ok"] for r in rows] == [True, False, False]
    for row in rows[1:]:
        assert row["error"]["message"].startswith("no agent answered within 0.2s: unix:")
        assert "no agent is running" in row["error"]["message"]


# -- info and tasks on a fleet, for humans ---------------------------------------------------------


def test_fleet_info_is_a_table(agents: list[AppProcess], fleet_dir: Path) -> None:
    nodes = [a.node for a in agents[2:4]] + [f"unix:{fleet_dir}/nothing.sock"]
    result = run_rpcctl(*fleet_args(nodes), "info")
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "NODE", "OUTCOME", "TIME", "APP", "PID", "UPTIME", "READY", "JOBS", "VERSION", "RPCCTL"
    ]  # fmt: skip
    for app, line in zip(agents[2:4], lines[1:3], strict=True):
        cells = line.split()
        assert cells[0] == app.node
        assert cells[1] == "ok"
        assert cells[4:6] == ["sampleapp", str(app.proc.pid)]
        assert cells[-4] in ("yes", "no")
        assert cells[-2] == "-"  # sampleapp reports no version
        assert "{" not in line  # no JSON blob
    assert lines[3].split()[:2] == [nodes[2], "unreachable"]
    assert lines[-1].startswith("2/3 nodes ok")
    assert result.returncode == 3


def test_fleet_tasks_lists_each_task_once(agents: list[AppProcess]) -> None:
    nodes = [a.node for a in agents[2:5]]
    result = run_rpcctl(*fleet_args(nodes), "tasks")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NODE", "OUTCOME", "TIME", "TASKS"]
    counts = {line.split()[-1] for line in lines[1:4]}
    assert counts == {str(sum(line.startswith("  sampleapp.") for line in lines))}
    assert lines.count("  sampleapp.whoami() -> str") == 1
    assert "{" not in "".join(lines[1:4])
    assert lines[-1].startswith("3/3 nodes ok")


def test_fleet_tasks_names_the_nodes_a_task_is_missing_on() -> None:
    from rpcctl.cli._fleet_table import tasks_details

    old = [{"name": "m.a", "signature": "m.a() -> None"}]
    new = [*old, {"name": "m.b", "signature": "m.b(x: int) -> int"}]
    outcome = fleet.MulticallResult(
        [
            fleet.Outcome("tcp://a:1", new),
            fleet.Outcome("tcp://b:1", old),
            fleet.Outcome("tcp://c:1", error=rpcctl.Unreachable("down")),
        ],
        0.0,
    )
    assert tasks_details(outcome) == [
        "",
        "TASKS",
        "  m.a() -> None",
        "  m.b(x: int) -> int  (on 1/2; not on tcp://b:1)",
    ]


def test_one_pings_at_most_parallel_nodes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rpc --one` honours --parallel: ten dead nodes, two pinging threads."""
    from rpcctl import _transport
    from rpcctl.exceptions import Unreachable

    threads: set[int] = set()

    def dead(address: object, timeout: float, security: object) -> None:
        threads.add(threading.get_ident())
        raise Unreachable(f"{address}: nobody")

    monkeypatch.setattr(_transport, "ping", dead)
    nodes = [f"tcp://127.0.0.1:{port}" for port in range(1, 11)]
    with pytest.raises(Unreachable, match="none of 10 nodes answered"):
        fleet.first_answering(nodes, timeout=1.0, parallel=2)
    assert 1 <= len(threads) <= 2


def test_a_client_bug_on_one_node_is_raised_not_reported_ok() -> None:
    """An exception that is no RpcctlError (a bug of ours) once killed its worker thread
    and left the node reported ok with a null result."""

    def action(address: Any, deadline: float, security: Any) -> Any:
        raise OverflowError("timestamp out of range for platform time_t")

    with pytest.raises(OverflowError):
        fleet.fan_out(["unix:/nonexistent/a.sock", "unix:/nonexistent/b.sock"], action, 1.0)


@pytest.mark.parametrize(
    "command", [["rpc", "--timeout", "1e12", "x.y"], ["info", "--timeout", "1e12"]]
)
def test_seconds_past_a_year_are_a_usage_error_on_a_fleet(
    short_tmp: Path, command: list[str]
) -> None:
    """Once an OverflowError in every fan-out worker and `1/1 node ok ... null`."""
    nodes = ["-n", f"unix:{short_tmp}/a.sock", "-n", f"unix:{short_tmp}/b.sock"]
    result = run_rpcctl(*nodes, *command)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--timeout': '1e12' is over a year"
        + ("; inf waits without end." if command[0] == "rpc" else ".")
    )
