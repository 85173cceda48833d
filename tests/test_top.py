"""rpcctl top: the model against real agents, the Textual app through its own harness
(``App.run_test`` and its pilot), the command's options and exit codes, and one run in a
real terminal (tmux)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import rpcctl
from conftest import (
    APPS,
    DEADLINE,
    SAMPLEAPP,
    AppProcess,
    rpcctl_executable,
    run_rpcctl,
    wait_until,
)
from rpcctl._transport import Security
from rpcctl.cli import cli
from rpcctl.top import columns as cols
from rpcctl.top.model import Fleet, Health, NodeState, Progress, Snapshot, short_names

INTROAPP = [sys.executable, str(APPS / "introapp.py")]
INTERVAL = 0.3  # the tests' refresh: quick, within what the command accepts


def start(command: list[str], node: str, version: str, **env: str) -> AppProcess:
    return AppProcess(command, node=node, env={"RPCCTL_APP_VERSION": version, **env})


class Nodes:
    """Three real agents: two healthy sampleapps (1.0.0, 1.1.0) and a sick introapp (2.0.0,
    its introapp.database check fails) on an event loop."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.apps: list[AppProcess] = []
        self.apps.append(start(SAMPLEAPP, f"unix:{directory}/alpha/agent.sock", "1.0.0"))
        self.apps.append(start(SAMPLEAPP, f"unix:{directory}/beta/agent.sock", "1.1.0"))
        self.apps.append(
            start(
                INTROAPP,
                f"unix:{directory}/gamma/agent.sock",
                "2.0.0",
                INTROAPP_SICK="1",
                INTROAPP_LOOP="1",  # its agent on an asyncio loop: a loop lag to show
            )
        )

    @property
    def nodes(self) -> list[str]:
        return [app.node for app in self.apps]

    def close(self) -> None:
        for app in self.apps:
            app.close()


@pytest.fixture(scope="module")
def three(module_tmp: Path) -> Iterator[Nodes]:
    nodes = Nodes(module_tmp)
    try:
        yield nodes
    finally:
        nodes.close()


def run_app(
    fleet: Fleet, body: Callable[[Any, Any], Awaitable[None]], size: tuple[int, int] = (160, 40)
) -> Any:
    """Run TopApp on *fleet* under Textual's harness; *body(app, pilot)*; the app."""
    from rpcctl.top.app import TopApp

    app = TopApp(fleet)

    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await body(app, pilot)

    try:
        asyncio.run(main())
    finally:
        fleet.stop()
    return app


async def until(pilot: Any, condition: Callable[[], object], what: str) -> None:
    """Let the app run until *condition()* holds, or fail after the deadline."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def row(app: Any, table: str, key: str) -> list[str]:
    """The cells of row *key* of *table* on the fleet screen, as text."""
    from textual.widgets import DataTable

    widget = app.fleet_screen.query_one(f"#{table}", DataTable)
    if key not in widget.rows:
        return []
    return [str(cell) for cell in widget.get_row(key)]


def shown_columns(app: Any, table: str) -> list[str]:
    from textual.widgets import DataTable

    widget = app.fleet_screen.query_one(f"#{table}", DataTable)
    return [str(key.value) for key in widget.columns]


# -- the model, plain functions ------------------------------------------------------------------


def test_short_names_tell_nodes_apart() -> None:
    assert short_names(["unix:/run/a/agent.sock", "unix:/run/b/agent.sock"]) == {
        "unix:/run/a/agent.sock": "a",
        "unix:/run/b/agent.sock": "b",
    }
    assert short_names(["tcp://10.0.0.1:7000", "tcp://10.0.0.2:7000"]) == {
        "tcp://10.0.0.1:7000": "10.0.0.1",
        "tcp://10.0.0.2:7000": "10.0.0.2",
    }
    assert short_names(["tcp://h:4001", "tcp://h:4002"])["tcp://h:4002"] == "4002"
    assert short_names(["unix:/run/app.sock"]) == {"unix:/run/app.sock": "app.sock"}
    assert short_names(["tls://db.example.com:9000"]) == {
        "tls://db.example.com:9000": "db.example.com:9000"
    }
    # Nothing shared to cut: the whole addresses.
    mixed = short_names(["unix:/a.sock", "tcp://h:1"])
    assert mixed == {"unix:/a.sock": "unix:/a.sock", "tcp://h:1": "tcp://h:1"}


def test_columns_drop_by_priority_and_keep_their_order() -> None:
    columns = cols.node_columns(10)
    everything = [c.key for c in columns]
    assert [c.key for c in cols.fit(columns, 400)] == everything
    narrow = [c.key for c in cols.fit(columns, 78)]
    assert narrow == ["node", "version", "state", "health", "cpu", "jobs"]
    assert sum(c.width + cols.CELL_PADDING for c in cols.fit(columns, 78)) <= 78
    # The node column stays however narrow the terminal.
    assert [c.key for c in cols.fit(columns, 5)] == ["node"]


def test_progress_cells() -> None:
    assert cols.progress(None) == ""
    assert cols.progress(Progress(3, 10, "step 3")) == "███░░░░░░░  30% step 3"
    assert cols.progress(Progress(12, None, "rows")) == "12 rows"
    assert cols.progress(Progress(20, 10, None)) == "██████████ 100%"  # past the total
    assert cols.progress(Progress(1.5, 0, None)) == "1.5"


def node_state(name: str, **fields: Any) -> NodeState:
    return NodeState(name, name, polled_at=1.0, **fields)


def test_snapshot_summary_and_exit_code() -> None:
    up = node_state("a", up=True, reason=None, health=Health(True))
    sick = node_state("b", up=True, reason=None, health=Health(False, ("db",)))
    down = node_state("c", reason="gone", exit_code=3)
    timed_out = node_state("d", reason="slow", exit_code=4)
    skipped = NodeState("e", "e", reason=None, skipped="version is '1' (--where version=2)")
    snap = Snapshot((up, sick, down, timed_out, skipped), 0.0, 1.5)
    assert snap.summary() == "2/4 nodes up, 1 unhealthy, 0 jobs running, 1 skipped by --where"
    assert snap.exit_code() == 3  # a tie between 3 and 4: the lower
    assert Snapshot((up, sick), 0.0, 1.5).exit_code() == 0
    assert Snapshot((skipped,), 0.0, 1.5).exit_code() == 3  # --where kept no node
    assert cols.state(down) == "DOWN"
    assert cols.health(down) == "gone"
    assert cols.health(sick) == "✗ db"
    assert cols.state(NodeState("w", "w")) == "waiting"  # not asked yet
    drained = node_state("f", up=True, reason=None, drained={"by": "ops", "since": 1.0})
    assert cols.state(drained) == "drained"


# -- the model against real agents ---------------------------------------------------------------


def test_once_json_shows_every_node(three: Nodes) -> None:
    dead = f"unix:{three.directory}/dead/agent.sock"
    args = [a for node in [*three.nodes, dead] for a in ("-n", node)]
    result = run_rpcctl(*args, "top", "--once", "--json")
    assert result.returncode == 3, result.stderr  # the dead node: unreachable
    document = json.loads(result.stdout)
    assert document["ok"] is False
    nodes = {n["short"]: n for n in document["result"]["nodes"]}
    assert set(nodes) == {"alpha", "beta", "gamma", "dead"}
    assert [nodes[n]["version"] for n in ("alpha", "beta", "gamma")] == ["1.0.0", "1.1.0", "2.0.0"]
    assert nodes["alpha"]["health"]["ok"] is True
    assert nodes["gamma"]["health"] == {
        "ok": False,
        "failing": ["introapp.database"],
        "checks": nodes["gamma"]["health"]["checks"],
    }
    assert nodes["dead"]["up"] is False
    assert "no agent is running" in nodes["dead"]["reason"]
    assert nodes["alpha"]["pid"] == three.apps[0].proc.pid
    assert nodes["alpha"]["rss_bytes"] > 0
    assert nodes["alpha"]["threads"] >= 1
    assert nodes["alpha"]["ready"] is True
    assert nodes["alpha"]["drained"] is None
    assert nodes["alpha"]["loop_lag_ms"] is None
    assert nodes["gamma"]["event_loop"] is True
    assert nodes["gamma"]["loop_lag_ms"] >= 0
    assert document["result"]["summary"] == "3/4 nodes up, 1 unhealthy, 0 jobs running"


def test_once_json_where_keeps_matching_nodes(three: Nodes) -> None:
    args = [a for node in three.nodes for a in ("-n", node)]
    result = run_rpcctl(*args, "top", "--once", "--json", "--where", "version=1.1.0")
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)["result"]["nodes"]
    kept = [n["short"] for n in nodes if n["skipped"] is None]
    assert kept == ["beta"]
    assert {n["skipped"] for n in nodes if n["short"] != "beta"} == {
        "version is '1.0.0' (--where version=1.1.0)",
        "version is '2.0.0' (--where version=1.1.0)",
    }


def test_a_job_shows_with_its_progress(three: Nodes, short_tmp: Path) -> None:
    gate = short_tmp / "gate"
    fleet = Fleet(three.nodes, interval=INTERVAL)
    fleet.start()
    try:
        with rpcctl.connect(three.apps[1].node) as conn:
            job_id = conn.start("sampleapp.chatty", kwargs={"lines": 4, "gate": str(gate)})

            def progressed() -> bool:
                jobs = fleet.snapshot().jobs
                return bool(jobs) and jobs[0].progress == Progress(3, 4, "step 3")

            wait_until(progressed, what="the job's progress")
            (job,) = fleet.snapshot().jobs
            assert (job.id, job.task, job.short) == (job_id, "sampleapp.chatty", "beta")
            gate.touch()
            wait_until(lambda: not fleet.snapshot().jobs, what="the job to end")
    finally:
        fleet.stop()


def test_a_killed_node_goes_down_and_comes_back(short_tmp: Path) -> None:
    node = f"unix:{short_tmp}/run/agent.sock"
    app = start(SAMPLEAPP, node, "1.0.0")
    fleet = Fleet([node], interval=INTERVAL)
    fleet.start()
    try:
        wait_until(lambda: fleet.snapshot().nodes[0].up, what="the node up")
        app.proc.send_signal(signal.SIGKILL)
        app.proc.wait()
        wait_until(lambda: not fleet.snapshot().nodes[0].up, what="the node down")
        state = fleet.snapshot().nodes[0]
        assert state.reason
        assert state.exit_code == 3
        assert state.version == "1.0.0"  # what it last said stays in view
        app.close()
        app = start(SAMPLEAPP, node, "1.2.0")
        wait_until(lambda: fleet.snapshot().nodes[0].version == "1.2.0", what="the node back")
        assert fleet.snapshot().nodes[0].up
    finally:
        fleet.stop()
        app.close()


def test_a_frozen_node_shows_down_within_its_deadline(short_tmp: Path) -> None:
    """SIGSTOP: the socket accepts but nothing answers; the node's deadline marks it down."""
    node = f"unix:{short_tmp}/run/agent.sock"
    app = start(SAMPLEAPP, node, "1.0.0")
    fleet = Fleet([node], interval=INTERVAL, timeout=1.0)
    fleet.start()
    try:
        wait_until(lambda: fleet.snapshot().nodes[0].up, what="the node up")
        app.proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: not fleet.snapshot().nodes[0].up, what="the frozen node down")
        assert fleet.snapshot().nodes[0].exit_code in (3, 4)
        app.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: fleet.snapshot().nodes[0].up, what="the thawed node up")
    finally:
        app.proc.send_signal(signal.SIGCONT)
        fleet.stop()
        app.close()


def test_an_answer_it_cannot_read_shows_the_node_down(
    agent_in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent whose stats lack what top reads (another version's): down, saying so; the
    poller lives on and the node comes back when the answers do."""
    node = agent_in_process.node
    fleet = Fleet([node], interval=INTERVAL)
    monkeypatch.setattr(rpcctl.client.Client, "stats", lambda self, objects=0: {"cpu": None})
    (state,) = fleet.poll_once().nodes
    assert not state.up
    assert state.reason == (
        "unexpected answer from the agent (TypeError: 'NoneType' object is not subscriptable)"
    )
    assert state.exit_code == 2
    monkeypatch.undo()
    (state,) = fleet.poll_once().nodes
    assert state.up
    assert state.app == "inproc"


# -- the app under Textual's harness -------------------------------------------------------------


def test_the_fleet_table(three: Nodes) -> None:
    fleet = Fleet(three.nodes, interval=INTERVAL)
    alpha, beta, gamma = three.nodes

    async def body(app: Any, pilot: Any) -> None:
        await until(pilot, lambda: all(row(app, "nodes", n)[:1] for n in three.nodes), "rows")
        await until(pilot, lambda: "✗" in " ".join(row(app, "nodes", gamma)), "sick gamma")
        columns = shown_columns(app, "nodes")
        cells = dict(zip(columns, row(app, "nodes", gamma), strict=True))
        assert cells["node"] == "gamma"
        assert cells["version"] == "2.0.0"
        assert cells["health"] == "✗ introapp.database"
        assert cells["app"] == "introapp"
        assert cells["pid"] == str(three.apps[2].proc.pid)
        assert cells["lag"].endswith(" ms")  # the loop's lag, from the agent.event_loop check
        assert row(app, "nodes", alpha)[shown_columns(app, "nodes").index("lag")] == "-"
        await until(pilot, lambda: "ok" in row(app, "nodes", alpha), "healthy alpha")
        cells = dict(zip(columns, row(app, "nodes", beta), strict=True))
        assert (cells["version"], cells["state"]) == ("1.1.0", "ready")
        summary = str(app.fleet_screen.query_one("#summary").render())
        assert "3/3 nodes up, 1 unhealthy" in summary
        await pilot.press("q")

    app = run_app(fleet, body)
    assert app.return_code == 0


def test_80_columns_drop_the_least_needed(three: Nodes) -> None:
    fleet = Fleet(three.nodes, interval=INTERVAL)

    async def body(app: Any, pilot: Any) -> None:
        await until(pilot, lambda: row(app, "nodes", three.nodes[0]), "rows")
        shown = shown_columns(app, "nodes")
        assert shown == [c.key for c in cols.fit(cols.node_columns(6), 78)]
        assert {"node", "health", "state", "version", "jobs"} <= set(shown)
        assert "pid" not in shown
        assert "threads" not in shown
        assert shown_columns(app, "jobs") == ["task", "node", "elapsed", "progress"]
        await pilot.resize_terminal(20, 6)  # absurdly small: the node column, no crash
        await until(pilot, lambda: shown_columns(app, "nodes") == ["node"], "the node only")
        await pilot.resize_terminal(200, 40)
        await until(pilot, lambda: len(shown_columns(app, "nodes")) == 12, "all columns")
        await pilot.press("q")

    assert run_app(fleet, body, size=(80, 24)).return_code == 0


def test_drill_down_keys(three: Nodes) -> None:
    from rpcctl.top.app import DetailScreen

    fleet = Fleet(three.nodes, interval=INTERVAL)

    async def detail(app: Any, pilot: Any, key: str, text: str) -> str:
        await pilot.press(key)
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), f"the {key} screen")
        await until(pilot, lambda: text in app.screen.text, f"{text!r} on the {key} screen")
        shown: str = app.screen.text
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, DetailScreen), "back")
        return shown

    async def body(app: Any, pilot: Any) -> None:
        await until(pilot, lambda: row(app, "nodes", three.nodes[2]), "rows")
        await pilot.press("c")  # no job: said, nothing asked
        assert app.fleet_screen.message.startswith("no job selected")
        stack = await detail(app, pilot, "s", "Thread")
        assert f"Process {three.apps[0].proc.pid} (sampleapp)" in stack
        stats = await detail(app, pilot, "t", "memory:")
        assert "RSS" in stats
        await pilot.press("down", "down")  # the sick node
        health = await detail(app, pilot, "h", "introapp.database")
        assert "unhealthy: introapp.database: database unreachable" in health
        await pilot.press("q")

    assert run_app(fleet, body).return_code == 0


def test_a_job_started_elsewhere_shows_and_its_output_follows(
    three: Nodes, short_tmp: Path
) -> None:
    from rpcctl.top.app import FollowScreen

    gate = short_tmp / "gate"
    fleet = Fleet(three.nodes, interval=INTERVAL)
    with rpcctl.connect(three.apps[0].node) as conn:
        job_id = conn.start("sampleapp.chatty", kwargs={"lines": 3, "gate": str(gate)})
    key = f"{three.nodes[0]} {job_id}"

    async def body(app: Any, pilot: Any) -> None:
        await until(pilot, lambda: "step 2" in " ".join(row(app, "jobs", key)), "the job")
        cells = dict(zip(shown_columns(app, "jobs"), row(app, "jobs", key), strict=True))
        assert cells["task"] == "sampleapp.chatty"
        assert cells["node"] == "alpha"
        assert cells["progress"] == "███████░░░  67% step 2"
        await pilot.press("tab", "enter")
        await until(pilot, lambda: isinstance(app.screen, FollowScreen), "the output screen")
        screen = app.screen
        await until(pilot, lambda: "line 2" in screen.lines, "the output so far")
        gate.touch()
        await until(pilot, lambda: "line 3" in screen.lines, "the output as it comes")
        await until(pilot, lambda: screen.lines[-1].startswith("-- job succeeded"), "the end")
        await pilot.press("escape")
        await until(pilot, lambda: not row(app, "jobs", key), "the job gone from the table")
        await pilot.press("q")

    assert run_app(fleet, body).return_code == 0


def test_leaving_a_screen_before_its_answer(three: Nodes) -> None:
    """esc before a slow node answers: the late answer is dropped, the app goes on."""
    import socket as socket_module

    from rpcctl.top.app import DetailScreen

    mute = socket_module.create_server(("127.0.0.1", 0))  # accepts, never answers
    node = f"tcp://127.0.0.1:{mute.getsockname()[1]}"
    fleet = Fleet([three.nodes[0], node], interval=INTERVAL, timeout=1.0)

    async def body(app: Any, pilot: Any) -> None:
        await until(pilot, lambda: "DOWN" in row(app, "nodes", node), "the mute node down")
        await pilot.press("down", "s")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the stack screen")
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, DetailScreen), "back")
        await until(pilot, lambda: len(app.workers) == 0, "the late answer")
        assert app.is_running
        await pilot.press("q")

    try:
        assert run_app(fleet, body).return_code == 0
    finally:
        mute.close()


def cancel_body(
    fleet: Fleet, key: str, check: Callable[[str], None]
) -> Callable[[Any, Any], Awaitable[None]]:
    """Select the job *key*, press c: n keeps it; c, y cancels it; *check(status line)*."""
    from rpcctl.top.app import ConfirmScreen

    async def body(app: Any, pilot: Any) -> None:
        await until(pilot, lambda: row(app, "jobs", key), "the job")
        await pilot.press("tab", "c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question")
        assert app.screen.question.startswith(f"Cancel job {key.split()[1]} (sampleapp.")
        await pilot.press("n")
        await until(pilot, lambda: app.fleet_screen.message == "not cancelled", "no")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the question again")
        await pilot.press("y")
        await until(
            pilot,
            lambda: app.fleet_screen.message.startswith(("job ", "refused", "cancel failed")),
            "the cancel's outcome",
        )
        check(app.fleet_screen.message)
        await pilot.press("q")

    return body


def test_cancel_asks_first(three: Nodes) -> None:
    fleet = Fleet(three.nodes, interval=INTERVAL)
    with rpcctl.connect(three.apps[1].node) as conn:
        job_id = conn.start("sampleapp.cancellable", kwargs={"seconds": DEADLINE})
        key = f"{three.nodes[1]} {job_id}"

        def check(message: str) -> None:
            assert message.startswith(f"job {job_id} on beta: cancel requested")
            with pytest.raises(rpcctl.TaskFailed, match="was cancelled"):
                conn.follow(job_id, timeout=DEADLINE)

        assert run_app(fleet, cancel_body(fleet, key, check)).return_code == 0


def test_a_read_only_identity_is_told_the_grant_is_missing(short_tmp: Path) -> None:
    """oncall may read and run sampleapp.echo: not cancel deploy's job of another task."""
    from access_support import access_files

    access = access_files(short_tmp)
    node = f"unix:{short_tmp}/run/agent.sock"
    app = AppProcess(SAMPLEAPP, node=node, env={"RPCCTL_ACCESS": str(access)})
    deploy = Security.resolve(cookie_file=short_tmp / "deploy.cookie", identity="deploy")
    oncall = Security.resolve(cookie_file=short_tmp / "oncall.cookie", identity="oncall")
    fleet = Fleet([node], security=oncall, interval=INTERVAL)
    try:
        with rpcctl.client.Client(rpcctl.client.resolve_address(node), 5, deploy) as conn:
            job_id = conn.start("sampleapp.cancellable", kwargs={"seconds": DEADLINE})

            def check(message: str) -> None:
                assert message.startswith("refused: ")
                assert "lacks the grant to cancel" in message
                assert conn.job(job_id)["state"] == "running"
                conn.cancel(job_id)

            body = cancel_body(fleet, f"{node} {job_id}", check)
            assert run_app(fleet, body).return_code == 0
    finally:
        app.close()


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "Invalid value for '--interval'"),
        (["--interval", "nan"], "'nan' is not a number"),
        (["--interval", "0.05"], "--interval 0.05 is too short: at least 0.2 seconds"),
        (["--timeout", "-1"], "Invalid value for '--timeout'"),
        (["--json"], "--json prints one snapshot: add --once"),
        (["--once"], "--once prints JSON: add --json"),
        (["--once", "--json", "--where", "version"], "--where expects KEY=VALUE"),
        (["--interval", "inf"], "'inf' is not a finite number"),
        (["--once", "--json", "-n", "bogus"], "bogus"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = run_rpcctl("-n", "unix:/nonexistent/agent.sock", "top", *args)
    assert result.returncode == 2
    assert message in result.stderr.strip().splitlines()[-1]  # the error is its own line


def test_once_with_a_mute_node(three: Nodes) -> None:
    """A node that accepts and never answers: down within its deadline, the others shown."""
    import socket as socket_module

    with socket_module.create_server(("127.0.0.1", 0)) as mute:
        node = f"tcp://127.0.0.1:{mute.getsockname()[1]}"
        args = ["-n", three.nodes[0], "-n", node, "top", "--once", "--json", "--timeout", "1"]
        result = run_rpcctl(*args)
    assert result.returncode == 4, result.stderr
    alpha, silent = json.loads(result.stdout)["result"]["nodes"]
    assert alpha["up"] is True
    assert silent["up"] is False
    assert silent["exit_code"] == 4
    assert silent["reason"]


def test_top_needs_a_terminal() -> None:
    result = run_rpcctl("-n", "unix:/nonexistent/agent.sock", "top")
    assert result.returncode == 2
    assert result.stderr == (
        "rpcctl: error: `rpcctl top` draws on a terminal; for scripts: top --once --json\n"
    )


def test_without_textual_top_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "textual", None)  # import textual: ImportError
    for name in [m for m in sys.modules if m.startswith(("textual.", "rpcctl.top.app"))]:
        monkeypatch.delitem(sys.modules, name)
    result = CliRunner().invoke(cli, ["-n", "unix:/nonexistent/agent.sock", "top"])
    assert result.exit_code == 2
    assert result.stderr == (
        "rpcctl: error: `rpcctl top` needs Textual: pip install 'rpcctl[top]' "
        "(or `top --once --json` without it)\n"
    )
    # --once --json needs no Textual.
    once = CliRunner().invoke(cli, ["-n", "unix:/nonexistent/a.sock", "top", "--once", "--json"])
    assert once.exit_code == 3
    assert json.loads(once.stdout)["result"]["nodes"][0]["up"] is False


def test_the_launcher_runs_top(sample_app: AppProcess, short_tmp: Path) -> None:
    release = short_tmp / "rel"
    release.mkdir()
    init = run_rpcctl("release", "init", "demo", cwd=release)
    assert init.returncode == 0, init.stderr
    config = release / "rpcctl.toml"
    text = config.read_text()
    lines = [
        f'node = "{sample_app.node}"' if line.startswith("node = ") else line
        for line in text.splitlines()
    ]
    config.write_text("\n".join(lines) + "\n")
    launcher = str(release / "bin" / "demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPCCTL_")}
    once = subprocess.run(
        [launcher, "top", "--once", "--json"], capture_output=True, text=True, env=env, check=False
    )
    assert once.returncode == 0, once.stderr
    (node,) = json.loads(once.stdout)["result"]["nodes"]
    assert (node["node"], node["pid"]) == (sample_app.node, sample_app.proc.pid)
    piped = subprocess.run([launcher, "top"], capture_output=True, text=True, env=env, check=False)
    assert piped.returncode == 2
    assert f"`{launcher} top` draws on a terminal" in piped.stderr


# -- a real terminal -----------------------------------------------------------------------------


def test_top_in_a_real_terminal(three: Nodes, short_tmp: Path) -> None:
    from test_console import Tmux  # the one tmux driver of the tests

    gate = short_tmp / "gate"
    doomed = start(SAMPLEAPP, f"unix:{three.directory}/delta/agent.sock", "0.9.0")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "TMUX"))}
    env.update({"TERM": "xterm-256color", "HOME": str(short_tmp)})
    tmux = Tmux(short_tmp, env)
    nodes = " ".join(f"-n {node}" for node in [*three.nodes, doomed.node])
    command = f"{rpcctl_executable()} {nodes} top --interval {INTERVAL}; echo EXITED=$?; exec cat"
    try:
        tmux("new-session", "-d", "-s", "console", "-x", "120", "-y", "30", command)
        screen = tmux.wait_for("4/4 nodes up, 1 unhealthy")
        for name, version in (("alpha", "1.0.0"), ("beta", "1.1.0"), ("gamma", "2.0.0")):
            assert any(name in line and version in line for line in screen.splitlines())
        tmux.wait_for("✗ introapp.database")
        with rpcctl.connect(three.apps[1].node) as conn:
            job_id = conn.start("sampleapp.chatty", kwargs={"lines": 3, "gate": str(gate)})
            screen = tmux.wait_for("sampleapp.chatty")
            (line,) = [line for line in screen.splitlines() if "sampleapp.chatty" in line]
            assert "beta" in line
            doomed.proc.send_signal(signal.SIGKILL)
            screen = tmux.wait_for("3/4 nodes up")
            (line,) = [line for line in screen.splitlines() if " delta " in line]
            assert "DOWN" in line
            gate.touch()
            assert conn.follow(job_id, timeout=DEADLINE) == 3
        tmux("send-keys", "-t", "console", "q")
        tmux.wait_for("EXITED=0")
    finally:
        tmux.kill()
        doomed.close()
