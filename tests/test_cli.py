"""The CLI through click's CliRunner, against an agent in this process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import app_agent
from rpcctl.cli import cli


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("RPCCTL_NODE", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, node: str, *args: str) -> object:
    return runner.invoke(cli, ["-n", node, *args], catch_exceptions=False)


def test_ping(runner: CliRunner, agent_in_process: app_agent.Agent) -> None:
    result = runner.invoke(cli, ["--node", agent_in_process.node, "ping"])
    assert (result.exit_code, result.stdout, result.stderr) == (0, "pong\n", "")


def test_node_from_environment(
    runner: CliRunner, agent_in_process: app_agent.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPCCTL_NODE", agent_in_process.node)
    assert runner.invoke(cli, ["ping"]).stdout == "pong\n"


def test_rpc_renders_strings_raw_and_data_as_json(
    runner: CliRunner, agent_in_process: app_agent.Agent
) -> None:
    node = agent_in_process.node
    assert runner.invoke(cli, ["-n", node, "rpc", 'sampleapp.echo("hi")']).stdout == "hi\n"
    assert runner.invoke(cli, ["-n", node, "rpc", "sampleapp.echo"]).stdout == ""
    data = runner.invoke(cli, ["-n", node, "rpc", 'sampleapp.echo({"a": [1, 2]})'])
    assert json.loads(data.stdout) == {"a": [1, 2]}
    as_json = runner.invoke(cli, ["-n", node, "rpc", "--json", "add(1, 2, scale=2)"])
    assert json.loads(as_json.stdout) == {"ok": True, "result": 6}


def test_tasks_lists_signatures_and_docs(
    runner: CliRunner, agent_in_process: app_agent.Agent
) -> None:
    result = runner.invoke(cli, ["-n", agent_in_process.node, "tasks"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    at = lines.index("sampleapp.add(a: int, b: int = 0, *, scale: int = 1) -> int")
    assert lines[at + 1 : at + 3] == ["    alias: add", "    Add two numbers and scale the sum."]
    listed = json.loads(runner.invoke(cli, ["-n", agent_in_process.node, "tasks", "--json"]).stdout)
    assert any(t["name"] == "sampleapp.async_double" and t["async"] for t in listed["result"])


def test_info(runner: CliRunner, agent_in_process: app_agent.Agent) -> None:
    result = runner.invoke(cli, ["-n", agent_in_process.node, "info"])
    assert result.exit_code == 0
    assert "app:      inproc" in result.stdout
    assert "jobs:     0 running" in result.stdout
    details = json.loads(runner.invoke(cli, ["-n", agent_in_process.node, "info", "--json"]).stdout)
    assert details["result"]["pid"] > 0


@pytest.mark.parametrize(
    ("expression", "code", "stderr_has"),
    [
        ("nope.task", 6, "no task named 'nope.task'; `rpcctl tasks` lists the registered tasks"),
        ('sampleapp.boom("kaput")', 1, "ValueError: kaput"),
        ("sampleapp.add(1, 2, 3)", 2, "the signature is sampleapp.add(a: int"),
        ("sampleapp.add(1, zap=2)", 2, "unexpected keyword argument 'zap'"),
        ('sampleapp.add(os.system("x"))', 2, "not a call"),
        ("sampleapp.add(", 2, "bad expression"),
    ],
)
def test_errors_map_to_exit_codes(
    runner: CliRunner,
    agent_in_process: app_agent.Agent,
    expression: str,
    code: int,
    stderr_has: str,
) -> None:
    result = runner.invoke(cli, ["-n", agent_in_process.node, "rpc", expression])
    assert result.exit_code == code
    assert stderr_has in result.stderr
    assert result.stdout == ""


def test_json_errors_have_one_shape(runner: CliRunner, agent_in_process: app_agent.Agent) -> None:
    result = runner.invoke(cli, ["-n", agent_in_process.node, "rpc", "--json", "sampleapp.boom"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["kind"] == "task_failed"
    assert error["exit_code"] == 1
    assert error["type"] == "ValueError"
    assert "Traceback" in error["traceback"]


def test_timeout_exits_4(runner: CliRunner, agent_in_process: app_agent.Agent) -> None:
    result = runner.invoke(
        cli, ["-n", agent_in_process.node, "rpc", "--timeout", "0.05", "sampleapp.sleep(1)"]
    )
    assert result.exit_code == 4
    assert "did not finish within 0.05s" in result.stderr


def test_no_node_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["ping"])
    assert result.exit_code == 2
    assert "no node given" in result.stderr


def test_bad_node_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["-n", "/just/a/path", "ping"])
    assert result.exit_code == 2
    assert "expected unix:PATH or tcp://HOST:PORT" in result.stderr


def test_unreachable_exits_3(runner: CliRunner, short_tmp: Path) -> None:
    result = runner.invoke(cli, ["-n", f"unix:{short_tmp}/none.sock", "ping"])
    assert result.exit_code == 3
    assert "no agent is running" in result.stderr


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("rpcctl, version ")
