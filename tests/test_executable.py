"""The real rpcctl executable against real agent processes."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import SAMPLEAPP, AppProcess, rpcctl_executable, run_rpcctl, wait_until


def assert_still_serving(app: AppProcess) -> None:
    assert app.alive()
    result = app.rpcctl("ping")
    assert (result.returncode, result.stdout) == (0, "pong\n"), result.stderr


def test_ping_tasks_info_rpc(shared_sample_app: AppProcess) -> None:
    app = shared_sample_app
    assert app.rpcctl("ping").stdout == "pong\n"
    assert "sampleapp.sleep(seconds: float) -> float" in app.rpcctl("tasks").stdout
    assert "app:      sampleapp" in app.rpcctl("info").stdout
    result = app.rpcctl("rpc", "sampleapp.add(2, b=3, scale=2)")
    assert (result.returncode, result.stdout) == (0, "10\n")


@pytest.mark.parametrize(
    ("expression", "code", "stderr_has"),
    [
        ("sampleapp.nope", 6, "no task named 'sampleapp.nope'"),
        ("sampleapp.nope", 6, "`rpcctl tasks` lists the registered tasks"),
        ("sampleapp.add(1,", 2, "bad expression"),
        ('sampleapp.echo(os.system("touch /tmp/rpcctl-pwned"))', 2, "'os.system(\"touch"),
        ("sampleapp.echo(secret)", 2, "at 'secret': argument 1 must be a literal"),
        ("sampleapp.echo(os.environ)", 2, "not an attribute"),
        ("sampleapp.echo(lambda: 1)", 2, "not a lambda"),
        ("sampleapp.add(1, 2, 3)", 2, "the signature is sampleapp.add(a: int, b: int = 0"),
        ("sampleapp.add(1, nope=2)", 2, "unexpected keyword argument 'nope'"),
        ('sampleapp.boom("bad input")', 1, "ValueError: bad input"),
        ("sampleapp.exit_app", 1, "SystemExit: 3"),
    ],
)
def test_bad_input_gets_its_exit_code_and_the_app_keeps_serving(
    shared_sample_app: AppProcess, expression: str, code: int, stderr_has: str
) -> None:
    result = shared_sample_app.rpcctl("rpc", expression)
    assert result.returncode == code, result.stderr
    assert stderr_has in result.stderr
    assert result.stdout == ""
    assert not Path("/tmp/rpcctl-pwned").exists()
    assert_still_serving(shared_sample_app)


def test_a_task_that_raises_shows_the_remote_traceback(shared_sample_app: AppProcess) -> None:
    result = shared_sample_app.rpcctl("rpc", 'sampleapp.boom("kaput")')
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert any("sampleapp.py" in line and "in boom" in line for line in lines)
    assert lines[-1] == "rpcctl: error: sampleapp.boom raised ValueError: kaput"


def test_nothing_listening_exits_3(short_tmp: Path) -> None:
    result = run_rpcctl("-n", f"unix:{short_tmp}/absent.sock", "ping", timeout=10)
    assert result.returncode == 3
    assert "no agent is running (the socket does not exist)" in result.stderr


def test_stale_socket_exits_3(short_tmp: Path) -> None:
    path = short_tmp / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()
    for command in (["ping"], ["rpc", "sampleapp.echo"], ["tasks"], ["info"]):
        result = run_rpcctl("-n", f"unix:{path}", *command, timeout=10)
        assert result.returncode == 3, command
        assert "no agent is running (the socket is stale)" in result.stderr


def test_tcp_port_with_nothing_listening_exits_3() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))  # reserved, never listening
        port = holder.getsockname()[1]
        result = run_rpcctl("-n", f"tcp://127.0.0.1:{port}", "ping", timeout=10)
    assert result.returncode == 3
    assert "connection refused" in result.stderr


def test_ping_wait_gives_up_with_exit_3(short_tmp: Path) -> None:
    result = run_rpcctl("-n", f"unix:{short_tmp}/never.sock", "ping", "--wait", "2", timeout=30)
    assert result.returncode == 3
    assert "no agent answered within 2s" in result.stderr


def test_ping_wait_sees_an_agent_that_starts_late(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/late.sock"
    waiter = subprocess.Popen(
        [rpcctl_executable(), "-n", node, "ping", "--wait", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiter.poll() is None  # nothing there yet: still waiting
        app = AppProcess(
            SAMPLEAPP,
            node=node,
            env={"SAMPLEAPP_AGENT_DELAY": "0.5"},
        )
        try:
            out, err = waiter.communicate(timeout=60)
            assert (waiter.returncode, out) == (0, "pong\n"), err
        finally:
            app.close()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()


def test_timeout_shorter_than_the_task_exits_4(shared_sample_app: AppProcess) -> None:
    result = shared_sample_app.rpcctl("rpc", "--timeout", "0.2", "sampleapp.sleep(3)")
    assert result.returncode == 4
    assert "sampleapp.sleep did not finish within 0.2s" in result.stderr
    assert_still_serving(shared_sample_app)


def test_ping_answers_while_a_long_task_runs(sample_app: AppProcess) -> None:
    slow = subprocess.Popen(
        [rpcctl_executable(), "-n", sample_app.node, "rpc", "sampleapp.sleep(5)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def task_running() -> bool:
            info = json.loads(sample_app.rpcctl("info", "--json").stdout)
            return any(j["task"] == "sampleapp.sleep" for j in info["result"]["jobs"])

        wait_until(task_running, what="the 5-second task to start")
        shown = sample_app.rpcctl("info")
        assert "jobs:     1 running" in shown.stdout, shown.stderr
        assert "sampleapp.sleep" in shown.stdout
        for _ in range(3):
            assert sample_app.rpcctl("ping").stdout == "pong\n"
            assert sample_app.rpcctl("rpc", "add(1, 1)").stdout == "2\n"
        assert slow.poll() is None  # answered while the task was still running
        out, err = slow.communicate(timeout=60)
        assert (slow.returncode, out) == (0, "5\n"), err
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.communicate()


def test_fifty_concurrent_clients_get_their_own_results(shared_sample_app: AppProcess) -> None:
    def one(i: int) -> tuple[int, str, str]:
        result = shared_sample_app.rpcctl("rpc", "--json", f'sampleapp.identity("token-{i}")')
        return result.returncode, result.stdout, result.stderr

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        outcomes = list(pool.map(one, range(50)))
    for i, (code, out, err) in enumerate(outcomes):
        assert code == 0, err
        assert json.loads(out)["result"]["token"] == f"token-{i}"
    assert_still_serving(shared_sample_app)


def test_non_json_results_follow_the_documented_rule(shared_sample_app: AppProcess) -> None:
    result = json.loads(shared_sample_app.rpcctl("rpc", "--json", "sampleapp.weird").stdout)
    assert result["result"] == {
        "when": "2026-01-02T03:04:05",
        "set": [1, 2, 3],
        "bytes": {"base64": "/wA="},
        "object": "<Plain>",
        "tuple": [1, 2],
    }


def test_sigterm_stops_the_app_and_removes_its_socket(sample_app: AppProcess) -> None:
    path = Path(sample_app.node.removeprefix("unix:"))
    assert path.exists()
    assert sample_app.stop() == 0
    assert not path.exists()


def test_ping_imports_only_what_it_needs(shared_sample_app: AppProcess) -> None:
    """Probes run `rpcctl ping` every few seconds: no click, RPyC, structlog, SQLAlchemy,
    typing, concurrent.futures or json (and the re it brings) on that path."""
    import sys

    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rpcctl", "-n", shared_sample_app.node, "ping"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stdout == "pong\n"
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    heavy = ("click", "rpyc", "structlog", "sqlalchemy", "typing", "concurrent.futures")
    for name in (*heavy, "json", "app_agent.wire.codec"):
        assert name not in imported, name
