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
        (
            "nope.task",
            6,
            "no task named 'nope.task'; `rpcctl tasks` lists the registered tasks",
        ),
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
    assert "expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT" in result.stderr


def test_unreachable_exits_3(runner: CliRunner, short_tmp: Path) -> None:
    result = runner.invoke(cli, ["-n", f"unix:{short_tmp}/none.sock", "ping"])
    assert result.exit_code == 3
    assert "no agent is running" in result.stderr


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("rpcctl, version ")


# -- --json and usage errors ------------------------------------------------------------------


def test_json_before_the_command(runner: CliRunner, agent_in_process: app_agent.Agent) -> None:
    result = runner.invoke(cli, ["--json", "-n", agent_in_process.node, "ping"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["result"] == "pong"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--json", "--bogus", "ping"], "No such option '--bogus'"),  # the group's options
        (["ping", "--json", "--wait", "soon"], "'soon' is not a valid float"),
        (["--json", "rpc"], "Missing argument 'EXPR"),
        (["--json", "nosuchcommand"], "No such command 'nosuchcommand'"),
        (["cookie", "generate", "--json"], "Missing argument 'FILE'"),  # a nested group
    ],
)
def test_usage_errors_with_json_print_an_envelope(
    runner: CliRunner, args: list[str], says: str
) -> None:
    result = runner.invoke(cli, args)
    assert result.exit_code == 2
    document = json.loads(result.stdout)  # one document on stdout
    assert document["ok"] is False
    assert document["error"]["kind"] == "usage"
    assert document["error"]["exit_code"] == 2
    assert says in document["error"]["message"]
    assert says in result.stderr  # and click's usage text on stderr, as without --json


def test_usage_errors_without_json_keep_stdout_empty(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["ping", "--bogus"])
    assert (result.exit_code, result.stdout) == (2, "")
    assert "No such option '--bogus'" in result.stderr


@pytest.mark.parametrize(
    ("words", "meant"),
    [
        (["mod.f", "1"], "'mod.f(1)'"),
        (["myapp.tasks.migrate", "head", "steps=2"], "'myapp.tasks.migrate(\"head\", steps=2)'"),
    ],
)
@pytest.mark.parametrize("command", ["rpc", "eval"])  # one check, shared
def test_rpc_with_shell_words_shows_the_expression(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, words: list[str], meant: str, command: str
) -> None:
    monkeypatch.setenv("RPCCTL_NODE", "unix:/nonexistent/agent.sock")
    result = runner.invoke(cli, [command, *words])
    assert result.exit_code == 2
    assert result.stderr == (
        f"rpcctl: error: EXPR is one shell word; quote it: rpcctl {command} {meant}\n"
    )


# -- hints name the command the user typed ----------------------------------------------------


def test_hints_name_the_launcher(
    runner: CliRunner, agent_in_process: app_agent.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bin/NAME sets RPCCTL_PROG; the agent's own hint is rewritten on the client's side."""
    monkeypatch.setenv("RPCCTL_PROG", "bin/shop")
    monkeypatch.setenv("RPCCTL_NODE", agent_in_process.node)
    result = runner.invoke(cli, ["rpc", "nope.task"])
    assert result.exit_code == 6
    assert "`bin/shop tasks` lists the registered tasks" in result.stderr
    assert "rpcctl tasks" not in result.stderr


def test_busy_names_lock_wait(runner: CliRunner, agent_in_process: app_agent.Agent) -> None:
    import rpcctl

    node = agent_in_process.node
    with rpcctl.connect(node) as app:
        job = app.start("sampleapp.locked", [60.0])
    try:
        busy = runner.invoke(cli, ["-n", node, "rpc", "sampleapp.locked(0)"])
        assert busy.exit_code == 7
        assert f"held by job {job}" in busy.stderr
        assert "to wait for it instead, add --lock-wait SECONDS" in busy.stderr
        waited = runner.invoke(
            cli, ["-n", node, "rpc", "--lock-wait", "0.01", "sampleapp.locked(0)"]
        )
        assert waited.exit_code == 7
        assert "--lock-wait SECONDS" not in waited.stderr  # it was given: no advice
    finally:
        runner.invoke(cli, ["-n", node, "cancel", job])


@pytest.mark.parametrize("node", ["/just/a/path", "tcp://host-without-port", "unix:"])
def test_bad_address_lists_every_form(runner: CliRunner, node: str) -> None:
    result = runner.invoke(cli, ["-n", node, "ping"])
    assert result.exit_code == 2
    assert "expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT" in result.stderr
    fleet = runner.invoke(cli, ["-n", node, "-n", "unix:/x.sock", "ping"])
    assert fleet.exit_code == 2
    assert "expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT" in fleet.stdout


def test_ctrl_c_before_the_job_is_named(
    runner: CliRunner, agent_in_process: app_agent.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while the job is being started: its id never came back, `jobs` lists it."""
    from rpcctl import client

    def interrupted(*_args: object, **_kwargs: object) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(client.Client, "start", interrupted)
    result = runner.invoke(cli, ["-n", agent_in_process.node, "--json", "rpc", "add(1)"])
    assert result.exit_code == 130
    message = "interrupted while the job was starting; `rpcctl jobs` lists it if it did"
    assert result.stderr == f"rpcctl: {message}\n"
    error = json.loads(result.stdout)["error"]
    assert error == {"kind": "interrupted", "message": message, "exit_code": 130}


def test_read_only_commands_log_nothing_at_info_beyond_the_connection(
    runner: CliRunner, short_tmp: Path
) -> None:
    """Probes and looks (ping, info, tasks, jobs, pid, logs) must not flood the app's log:
    the service's read-only methods log nothing at info or above. (The handshake's own
    `connection.accepted` line belongs to app_agent/_server/gate.py.)"""
    from structlog.testing import capture_logs

    import sampleapp  # noqa: F401  (its tasks)

    with capture_logs() as logs, app_agent.start(node=f"unix:{short_tmp}/a.sock") as agent:
        job = runner.invoke(cli, ["-n", agent.node, "rpc", "--detach", "add(1)"]).stdout.strip()
        runner.invoke(cli, ["-n", agent.node, "wait", job])
        logs.clear()
        for command in (["ping"], ["info"], ["tasks"], ["jobs"], ["pid"], ["logs", job]):
            assert runner.invoke(cli, ["-n", agent.node, *command]).exit_code == 0, command
        loud = [e["event"] for e in logs if e["log_level"] != "debug"]
    assert [event for event in loud if event != "connection.accepted"] == []


def test_every_command_is_in_the_lazy_map() -> None:
    """Commands load on first use: the map must name every one, or it would be missing."""
    import importlib

    for module in set(cli.lazy.values()):
        importlib.import_module(module)
    assert set(cli.commands) == set(cli.lazy)


@pytest.mark.parametrize("command", ["rpc", "eval"])
@pytest.mark.parametrize("value", ["nan", "1e12", "-1"])
def test_a_bad_lock_wait_is_a_usage_error(command: str, value: str) -> None:
    """--lock-wait is a seconds option like the others: NaN or a year and more never reach
    the agent (they once travelled as "NaN")."""
    result = CliRunner().invoke(
        cli, ["-n", "unix:/nonexistent/a.sock", command, "--lock-wait", value, "m.f"]
    )
    assert result.exit_code == 2
    assert "Invalid value for '--lock-wait'" in result.output
