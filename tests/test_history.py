"""The durable job history, wired into the agent (issue 24, items 1 and 2): real app
processes, the real rpcctl executable, SQLite beside the socket and the real PostgreSQL
shared by two replicas; a store that is down; retention; record_args; off; a database
restart. The store's own behaviour is tests/test_history_store.py's."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import rpcctl
from app_agent import wire
from conftest import SAMPLEAPP, AppProcess, run_rpcctl, wait_until
from rpcctl.cli import cli
from rpcctl.cli.history import merge, parse_query
from rpcctl.exceptions import UsageError

Entries = list[dict[str, Any]]


def sample(workdir: Path, name: str = "a", **env: str) -> AppProcess:
    """tests/apps/sampleapp.py on unix:WORKDIR/NAME/agent.sock with the RPCCTL_* *env*."""
    return AppProcess(SAMPLEAPP, node=f"unix:{workdir}/{name}/agent.sock", env=env)


@pytest.fixture
def apps() -> Iterator[list[AppProcess]]:
    """App processes a test starts (append them); every one closed afterwards."""
    started: list[AppProcess] = []
    yield started
    for app in started:
        app.close()


def history(app: AppProcess | str, *args: str) -> Entries:
    """`rpcctl history --json` of one node (exit 0 expected)."""
    node = app if isinstance(app, str) else app.node
    result = run_rpcctl("-n", node, "history", "--json", *args)
    assert result.returncode == 0, result.stderr
    entries: Entries = json.loads(result.stdout)["result"]
    return entries


def recorded(app: AppProcess, job: str, *args: str) -> dict[str, Any]:
    """The history's record of *job*, once the writer has written it."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        found[:] = [e for e in history(app, *args) if e["job"] == job]
        return bool(found)

    wait_until(written, what=f"job {job} in the history")
    assert len(found) == 1, found
    return found[0]


def run(app: AppProcess, expr: str) -> str:
    """Run *expr* through the executable; the id of its job (the newest)."""
    app.rpcctl("rpc", expr)
    return job_ids(app)[0]


def job_ids(app: AppProcess) -> list[str]:
    """Recent job ids, newest first (`rpcctl jobs`)."""
    result = app.rpcctl("jobs", "--json")
    assert result.returncode == 0, result.stderr
    return [job["id"] for job in json.loads(result.stdout)["result"]]


def calls_go_on(app: AppProcess, store: str) -> int:
    """Calls to *app*, whose *store* is unavailable, succeed; `history` fails with exit 3
    in one line; the app stops promptly (closing the store is bounded). How many times the
    app logged the store unavailable."""
    for i in range(5):
        result = app.rpcctl("rpc", f"sampleapp.echo({i})")
        assert (result.returncode, result.stdout) == (0, f"{i}\n")
    failed = app.rpcctl("history")
    assert failed.returncode == 3
    [line] = failed.stderr.strip().splitlines()
    assert line.startswith(f"rpcctl: error: the history store {store} cannot be read: ")
    assert app.rpcctl("ping").returncode == 0
    assert app.stop() == 0
    events = [json.loads(x)["event"] for x in app.stderr().splitlines() if x.startswith("{")]
    return events.count("history.unavailable")


# -- one node, SQLite beside the socket ---------------------------------------------------------


def test_history_survives_an_app_restart(short_tmp: Path, apps: list[AppProcess]) -> None:
    app = sample(short_tmp)
    apps.append(app)
    ok = run(app, "sampleapp.echo('hello')")
    failed = run(app, "sampleapp.boom('it broke\\nsecond line')")
    recorded(app, failed)
    assert app.stop() == 0
    database = Path(app.node.removeprefix("unix:") + ".history.sqlite3")
    assert stat.S_IMODE(database.stat().st_mode) == 0o600

    again = sample(short_tmp)
    apps.append(again)
    entries = history(again)
    assert [e["job"] for e in entries] == [failed, ok]  # newest first
    first = entries[1]
    assert first["task"] == "sampleapp.echo"
    assert (first["state"], first["exit_code"], first["error"]) == ("succeeded", 0, None)
    assert first["node"] == app.node
    assert first["caller"].startswith(f"uid={os.geteuid()} ")
    assert first["argument_sizes"] == {"value": len('"hello"')}
    assert first["arguments"] is None  # sizes, not values
    assert first["duration"] >= 0
    assert first["started"] > 0
    boom = entries[0]
    assert (boom["state"], boom["exit_code"]) == ("failed", 1)
    assert boom["error"] == "ValueError: it broke"  # the first line only

    table = again.rpcctl("history")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "JOB", "TASK", "CALLER", "NODE", "STARTED", "DURATION", "OUTCOME", "ERROR"
    ]  # fmt: skip
    assert lines[1].startswith(failed)
    assert "failed (1)" in lines[1]
    assert lines[1].endswith("ValueError: it broke")
    assert lines[2].startswith(ok)
    assert "succeeded (0)" in lines[2]


def test_every_outcome_is_recorded_once(short_tmp: Path, apps: list[AppProcess]) -> None:
    """Succeeded, failed, busy, cancelled and timed out; a timed-out task whose thread
    returns later is retired twice, and recorded once."""
    app = sample(short_tmp)
    apps.append(app)
    gate = short_tmp / "gate"
    timed_out = run(app, f"sampleapp.stubborn({str(gate)!r})")
    with rpcctl.connect(app.node) as client:
        cancelled = client.start("sampleapp.cancellable", (30,))
        client.cancel(cancelled)
        holder = client.start("sampleapp.locked", (30,))
        busy = run(app, "sampleapp.locked(0)")
        client.cancel(holder)
    gate.touch()  # the stubborn task's thread returns: its job is retired again
    wait_until(lambda: all(j["state"] != "running" for j in _listed(app)), what="jobs ended")
    succeeded = run(app, "sampleapp.add(1, 2)")
    recorded(app, succeeded)
    entries = history(app)
    by_job = {e["job"]: e for e in entries}
    assert len(by_job) == len(entries)  # no job twice
    outcomes = {job: (by_job[job]["state"], by_job[job]["exit_code"]) for job in by_job}
    assert outcomes[timed_out] == ("timed_out", 4)
    assert outcomes[cancelled] == ("cancelled", 1)
    assert outcomes[busy] == ("failed", 7)
    assert outcomes[holder] == ("cancelled", 1)
    assert outcomes[succeeded] == ("succeeded", 0)
    assert by_job[busy]["error"].startswith("busy")
    assert by_job[timed_out]["error"].startswith("timeout")


def _listed(app: AppProcess) -> Entries:
    result = app.rpcctl("jobs", "--json")
    listed: Entries = json.loads(result.stdout)["result"]
    return listed


def test_filters_since_task_identity_limit(short_tmp: Path, apps: list[AppProcess]) -> None:
    app = sample(short_tmp)
    apps.append(app)
    jobs = [run(app, f"sampleapp.echo({i})") for i in range(3)]
    added = run(app, "sampleapp.add(1)")
    recorded(app, added)
    assert [e["job"] for e in history(app, "--task", "sampleapp.ec*")] == jobs[::-1]
    assert [e["job"] for e in history(app, "--task", "sampleapp.ad?")] == [added]
    assert [e["job"] for e in history(app, "--limit", "2")] == [added, jobs[2]]
    assert len(history(app, "--since", "1h")) == 4
    assert history(app, "--since", "2999-01-01") == []
    assert history(app, "--identity", "nobody-here") == []
    with rpcctl.connect(app.node) as client:
        assert [e["job"] for e in client.history(task="sampleapp.add")] == [added]
        with pytest.raises(UsageError, match="limit must be a whole number"):
            client.history(limit=0)
        with pytest.raises(UsageError, match="has spaces or control characters"):
            client.history(task="sampleapp.\x1b[2J")


def test_record_args_is_opt_in(short_tmp: Path, apps: list[AppProcess]) -> None:
    app = sample(short_tmp)
    apps.append(app)
    kept = run(app, "sampleapp.remember('deploy 42', count=3)")
    not_kept = run(app, "sampleapp.echo('secret')")
    assert recorded(app, kept)["arguments"] == {"note": "deploy 42", "count": 3}
    entry = recorded(app, not_kept)
    assert entry["arguments"] is None
    assert entry["argument_sizes"] == {"value": len('"secret"')}
    assert "secret" not in (Path(app.node.removeprefix("unix:") + ".history.sqlite3")).read_text(
        errors="replace"
    ) + Path(app.node.removeprefix("unix:") + ".history.sqlite3-wal").read_text(errors="replace")


def test_off_keeps_nothing(short_tmp: Path, apps: list[AppProcess]) -> None:
    app = sample(short_tmp, RPCCTL_HISTORY="off")
    apps.append(app)
    assert app.rpcctl("rpc", "sampleapp.echo(1)").returncode == 0
    result = app.rpcctl("history")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rpcctl: error: this agent keeps no job history (history is off: start the app with "
        "history='sqlite:PATH' or 'postgresql://...', or set RPCCTL_HISTORY)"
    ]
    assert not list((short_tmp / "a").glob("*.sqlite3*"))


def test_retention_keeps_the_newest(short_tmp: Path, apps: list[AppProcess]) -> None:
    app = sample(short_tmp, RPCCTL_HISTORY_KEEP="5")
    apps.append(app)
    jobs = [run(app, f"sampleapp.echo({i})") for i in range(12)]
    recorded(app, jobs[-1])
    wait_until(lambda: len(history(app)) == 5, what="the history pruned to 5 records")
    assert [e["job"] for e in history(app)] == jobs[:-6:-1]


def test_unwritable_sqlite_store_does_not_fail_calls(
    short_tmp: Path, apps: list[AppProcess]
) -> None:
    """A SQLite path under a regular file cannot be created: logged once, calls go on, and
    `history` says why (exit 3)."""
    blocker = short_tmp / "not-a-directory"
    blocker.write_text("")
    app = sample(short_tmp, RPCCTL_HISTORY=f"sqlite:{blocker}/history.sqlite3")
    apps.append(app)
    assert calls_go_on(app, f"sqlite:{blocker}/history.sqlite3") == 1


# -- the command line: bad input is exit 2 with one line -----------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "rpcctl: error: --since: bad time 'yesterday': expected how "),
        (["--since", "5"], "rpcctl: error: --since: bad time '5'"),
        (["--limit", "0"], "rpcctl: error: --limit: expected a whole number from 1 to 10,000"),
        (["--limit", "many"], "rpcctl: error: --limit: expected a whole number from 1 to 10,000"),
        (["--limit", "10001"], "rpcctl: error: --limit: expected a whole number from 1 to 10,000"),
        (["--task", "a b"], "rpcctl: error: --task: the task pattern 'a b' has spaces or"),
        (["--task", "a" * 301], "rpcctl: error: --task: the task pattern is 301 characters long"),
        (["--task", ""], "rpcctl: error: --task: the task pattern is empty"),
        (["--task", "a\tb"], "rpcctl: error: --task: the task pattern 'a\\tb' has spaces or"),
        (["--identity", " "], "rpcctl: error: --identity: the identity name is empty"),
    ],
)
def test_bad_options_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = run_rpcctl("-n", "unix:/nonexistent/agent.sock", "history", *args)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message), line
    assert result.stdout == ""


def test_bad_option_as_json_is_a_usage_error_document() -> None:
    result = CliRunner().invoke(cli, ["-n", "unix:/x/a.sock", "history", "--json", "--limit", "0"])
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert (error["kind"], error["exit_code"]) == ("usage", 2)


def test_history_identity_filters_and_the_callers_identity_goes_first() -> None:
    """`history --identity NAME` is the filter; the global --identity (who calls) is given
    before the command."""
    query = parse_query(None, None, "deployer", "100")
    assert query == {"since": None, "task": None, "identity": "deployer", "limit": 100}
    command = cli.get_command(cli.make_context("rpcctl", ["history"]), "history")
    assert command is not None
    assert [p for p in command.params if "--identity" in p.opts] == [
        p for p in command.params if p.name == "identity_name"
    ]


def test_merge_keeps_each_job_of_each_node_once() -> None:
    def entry(job: str, node: str, started: float) -> dict[str, Any]:
        return {"job": job, "node": node, "started": started}

    a = [entry("j3", "n1", 3.0), entry("j1", "n1", 1.0), entry("j2", "n2", 2.0)]
    b = [entry("j3", "n1", 3.0), entry("j2", "n2", 2.0), entry("j1", "n2", 0.5)]
    merged = merge([a, b], limit=10)
    assert [(e["job"], e["node"]) for e in merged] == [
        ("j3", "n1"),
        ("j2", "n2"),
        ("j1", "n1"),
        ("j1", "n2"),  # the same id on another node is another job
    ]
    assert len(merge([a, b], limit=2)) == 2


# -- PostgreSQL: one table, two replicas ---------------------------------------------------------


def test_two_replicas_share_one_postgresql_table(
    pg_database: str, short_tmp: Path, apps: list[AppProcess]
) -> None:
    first = sample(short_tmp, "a", RPCCTL_HISTORY=pg_database)
    second = sample(short_tmp, "b", RPCCTL_HISTORY=pg_database)
    apps.extend([first, second])
    on_first = run(first, "sampleapp.echo(1)")
    on_second = run(second, "sampleapp.boom('down')")
    recorded(first, on_second)  # the second replica's job, read through the first
    entries = history(second)
    assert {(e["job"], e["node"]) for e in entries} == {
        (on_first, first.node),
        (on_second, second.node),
    }

    fleet = run_rpcctl("-n", first.node, "-n", second.node, "history", "--json")
    assert fleet.returncode == 0, fleet.stderr
    document = json.loads(fleet.stdout)
    merged = [(e["job"], e["node"]) for e in document["result"]]
    assert merged == [(on_second, second.node), (on_first, first.node)]  # once each
    assert [n["ok"] for n in document["nodes"]] == [True, True]

    table = run_rpcctl("-n", first.node, "-n", second.node, "history")
    assert table.returncode == 0, table.stderr
    rows = table.stdout.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [on_second, on_first]
    assert second.node in rows[0]
    assert first.node in rows[1]


def test_a_fleet_with_a_node_down_shows_the_others(
    pg_database: str, short_tmp: Path, apps: list[AppProcess]
) -> None:
    app = sample(short_tmp, RPCCTL_HISTORY=pg_database)
    apps.append(app)
    job = run(app, "sampleapp.echo(1)")
    recorded(app, job)
    gone = f"unix:{short_tmp}/gone/agent.sock"
    result = run_rpcctl("-n", app.node, "-n", gone, "history")
    assert result.returncode == 3
    assert result.stdout.splitlines()[1].startswith(job)
    assert f"rpcctl: error: {gone}: " in result.stderr


def test_the_store_survives_a_database_restart(
    pg_database: str, short_tmp: Path, apps: list[AppProcess]
) -> None:
    """Every session of the database dropped (as a restart does): the next records are
    written all the same (the writer reconnects)."""
    import sqlalchemy as sa

    app = sample(short_tmp, RPCCTL_HISTORY=pg_database)
    apps.append(app)
    before = run(app, "sampleapp.echo(1)")
    recorded(app, before)
    name = sa.make_url(pg_database).database
    admin = sa.create_engine(pg_database.rsplit("/", 1)[0] + "/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            dropped = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar()
    finally:
        admin.dispose()
    assert dropped, "the agent held no session to drop"
    after = [run(app, f"sampleapp.echo({i})") for i in range(3)]
    for job in after:
        recorded(app, job)
    assert len(history(app)) == 4


def test_a_postgresql_store_that_is_down_does_not_fail_calls(
    short_tmp: Path, apps: list[AppProcess]
) -> None:
    """A URL to a port nothing listens on: calls go on, the store is logged unavailable once,
    `history` fails with exit 3 in one line, and the app still stops promptly."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://postgres@127.0.0.1:{port}/test"
    app = sample(short_tmp, RPCCTL_HISTORY=url)
    apps.append(app)
    assert calls_go_on(app, url) == 1


def test_history_needs_the_read_grant(short_tmp: Path, apps: list[AppProcess]) -> None:
    access = short_tmp / "access.toml"
    import pwd

    user = pwd.getpwuid(os.geteuid()).pw_name
    access.write_text(f'[identity.runner]\nunix_user = "{user}"\nallow = ["sampleapp.echo"]\n')
    access.chmod(0o600)
    app = sample(short_tmp, RPCCTL_ACCESS=str(access))
    apps.append(app)
    result = app.rpcctl("history")
    assert result.returncode == wire.ErrorKind.AUTH.exit_code, result.stderr
    assert "needs the read grant" in result.stderr


def test_client_api_history_is_the_table_entry() -> None:
    """Client.history sends the protocol entry's arguments, in its order."""
    from app_agent.wire import protocol

    method = protocol.METHODS["history"]
    assert method.grant == protocol.READ
    assert [a.name for a in method.args] == ["since", "task", "identity", "limit"]
    import inspect

    parameters = list(inspect.signature(rpcctl.Client.history).parameters)[1:]
    assert parameters == [a.name for a in method.args]


def test_a_forked_child_leaves_the_parents_store_alone(agent_in_process: Any) -> None:
    """A child forked from the app (a pre-fork server's worker) records nothing and never
    touches the parent's SQLite connection; the parent's history goes on."""
    from app_agent._jobs import history as _history

    store = agent_in_process.state.jobs.history
    assert isinstance(store, _history.HistoryStore)
    with rpcctl.connect(agent_in_process.node) as client:
        client.call("sampleapp.echo", 1)
        first = client.history()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                job = agent_in_process.state.jobs.all()[-1]
                store.record_job(job)  # dropped: no writer starts in the child
                abandoned = store._closed and store._writing  # no writer may start here
                status = 0 if abandoned and store.dropped == 1 else 2
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.call("sampleapp.echo", 2)
        after = client.history()
    assert len(first) == 1
    assert len(after) == 2
    assert after[1]["job"] == first[0]["job"]


def test_a_timed_out_job_retired_twice_is_written_once(
    agent_in_process: Any, short_tmp: Path
) -> None:
    """Retired at its deadline and again when its thread returns: one record (the table's
    key would hide a second one, so the store's count is checked)."""
    store = agent_in_process.state.jobs.history
    gate = short_tmp / "gate"
    with rpcctl.connect(agent_in_process.node) as client, pytest.raises(rpcctl.CallTimeout):
        client.call("sampleapp.stubborn", str(gate))
    jobs = agent_in_process.state.jobs
    assert [j.state for j in jobs.overrunning()] == ["timed_out"]
    gate.touch()
    wait_until(lambda: not jobs.overrunning(), what="the stubborn task's thread to return")
    assert store.flush(30)
    assert (store.written, store.dropped) == (1, 0)
