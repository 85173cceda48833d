"""rpcctl drain / resume: readiness, the app's hooks, waiting for jobs, grants, fleets.

Real agents (tests/apps/drainapp.py) and the real rpcctl executable, plus unit tests of the
pieces a process cannot show (readiness the app declared itself, hook registration).
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import app_agent
from app_agent._server import drain as _drain
from app_agent._server import readiness as _readiness
from app_agent.wire import protocol
from conftest import (
    APPS,
    DEADLINE,
    AppProcess,
    listed_jobs,
    popen_rpcctl,
    run_rpcctl,
    wait_until,
)

DRAINAPP = [sys.executable, str(APPS / "drainapp.py")]


def start_drainapp(directory: Path, env: dict[str, str] | None = None) -> AppProcess:
    directory.mkdir(parents=True, exist_ok=True)
    node = f"unix:{directory}/run/agent.sock"
    return AppProcess(DRAINAPP, node=node, env={"DRAINAPP_DIR": str(directory), **(env or {})})


@pytest.fixture
def app(short_tmp: Path) -> Iterator[AppProcess]:
    process = start_drainapp(short_tmp / "a")
    try:
        yield process
    finally:
        process.close()


def hooks_run(app: AppProcess) -> list[str]:
    trace = Path(app.env["DRAINAPP_DIR"]) / "hooks.log"
    return trace.read_text().splitlines() if trace.exists() else []


def info(app: AppProcess, *options: str) -> dict[str, Any]:
    result = app.rpcctl("info", "--json", *options)
    assert result.returncode == 0, result.stderr
    details: dict[str, Any] = json.loads(result.stdout)["result"]
    return details


def test_drain_then_resume(app: AppProcess) -> None:
    assert app.rpcctl("ping", "--ready").returncode == 0
    assert info(app)["drained"] is None
    assert "drained:" not in app.rpcctl("info").stdout

    drained = app.rpcctl("drain")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout == f"{app.node}: drained: not ready (4 on_drain hooks ran)\n"
    assert drained.stderr == ""
    # Registration order; the async hook ran too.
    assert hooks_run(app) == ["drain consumer", "drain async"]

    not_ready = app.rpcctl("ping", "--ready")
    assert not_ready.returncode == 3
    assert not_ready.stderr.startswith("rpcctl: error: ")
    assert "not ready" in not_ready.stderr
    assert app.rpcctl("ping").returncode == 0  # liveness stays
    details = info(app)
    assert details["ready"] is False
    assert details["drained"]["by"].startswith("uid=")
    assert abs(details["drained"]["since"] - time.time()) < 3600  # a moment, in epoch seconds
    shown = app.rpcctl("info").stdout
    assert f"by {details['drained']['by']} (not ready)\n" in shown
    assert "\ndrained:  since " in shown
    table = app.rpcctl("info", "--where", "ready=false")
    assert table.returncode == 0, table.stderr  # a fleet of one, picked by readiness

    # Idempotent: nothing runs again, and it says since when and by whom.
    again = app.rpcctl("drain")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{app.node}: already drained since ")
    assert again.stdout.rstrip().endswith(f"by {details['drained']['by']}")
    assert hooks_run(app) == ["drain consumer", "drain async"]
    as_json = app.rpcctl("drain", "--json")
    report = json.loads(as_json.stdout)["result"]
    assert report["already"] is True
    assert report["drained"] == details["drained"]
    assert report["hooks"] == []

    resumed = app.rpcctl("resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == f"{app.node}: resumed: ready again (2 on_resume hooks ran)\n"
    assert hooks_run(app)[2:] == ["resume consumer"]
    assert app.rpcctl("ping", "--ready").returncode == 0
    assert info(app)["drained"] is None

    twice = app.rpcctl("resume")
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout == f"{app.node}: not drained: nothing to resume\n"
    assert hooks_run(app)[2:] == ["resume consumer"]


def test_the_audit_log_names_who_drained(short_tmp: Path) -> None:
    app = start_drainapp(short_tmp / "a")
    try:
        assert app.rpcctl("drain").returncode == 0
        assert app.rpcctl("resume").returncode == 0
    finally:
        log = [json.loads(line) for line in app.stderr().splitlines() if line.startswith("{")]
        app.close()
    events = {e["event"]: e for e in log if e["event"].startswith("drain.")}
    assert events["drain.drained"]["hooks"] == 4
    assert events["drain.drained"]["failed"] == []
    assert events["drain.drained"]["caller"].startswith("uid=")
    assert events["drain.resumed"]["drained_by"] == events["drain.drained"]["caller"]


def test_wait_jobs_waits_for_running_jobs(app: AppProcess) -> None:
    directory = Path(app.env["DRAINAPP_DIR"])
    job = json.loads(app.rpcctl("rpc", "--detach", "--json", 'drainapp.hold("go")').stdout)
    job_id = job["result"]["job"]
    wait_until(lambda: any(j["id"] == job_id for j in listed_jobs(app)), what="the job")

    # It does not end within the time given: exit 4 naming it, and the app is drained.
    late = app.rpcctl("drain", "--wait-jobs", "0.1")
    assert late.returncode == 4, late.stderr
    assert late.stdout == f"{app.node}: drained: not ready (4 on_drain hooks ran)\n"
    assert late.stderr == (
        f"rpcctl: error: drained, but 1 job still running after 0.1s: "
        f"{job_id} (drainapp.hold); `rpcctl jobs` lists them\n"
    )
    assert app.rpcctl("ping", "--ready").returncode == 3

    # A drain that waits long enough returns once the job has ended.
    waiting = popen_rpcctl("-n", app.node, "drain", "--wait-jobs", str(DEADLINE), "--json")
    (directory / "go").touch()
    out, err = waiting.communicate(timeout=DEADLINE * 2)
    assert waiting.returncode == 0, err
    report = json.loads(out)["result"]
    assert report["already"] is True
    assert report["running"] == []
    assert [j["state"] for j in listed_jobs(app) if j["id"] == job_id] == ["succeeded"]


def waiting_for_jobs(app: AppProcess) -> bool:
    """Whether a thread of the app is in drain's wait for jobs (rpcctl stack)."""
    stack = json.loads(app.rpcctl("stack", "--all", "--json").stdout)["result"]
    functions = [f["function"] for t in stack["threads"] for f in t["frames"]]
    return "_wait_for_jobs" in functions


def test_a_drain_whose_client_went_away_stops_waiting(app: AppProcess) -> None:
    job = json.loads(app.rpcctl("rpc", "--detach", "--json", 'drainapp.hold("never")').stdout)
    assert job["result"]["job"]
    waiting = popen_rpcctl("-n", app.node, "drain", "--wait-jobs", "3600")
    try:
        wait_until(lambda: waiting_for_jobs(app), what="drain waiting for the job")
    finally:
        waiting.kill()
        waiting.communicate(timeout=DEADLINE)
    wait_until(lambda: not waiting_for_jobs(app), what="the agent to stop waiting")
    assert app.rpcctl("ping", "--ready").returncode == 3  # drained all the same
    (Path(app.env["DRAINAPP_DIR"]) / "never").touch()


def test_a_failing_hook_is_named_and_the_app_stays_drained(app: AppProcess) -> None:
    fail = Path(app.env["DRAINAPP_DIR"]) / "fail"
    fail.touch()
    drained = app.rpcctl("drain")
    assert drained.returncode == 1
    assert drained.stderr == (
        "rpcctl: error: drained, but on_drain hook failed: "
        "drainapp.flaky_drain: RuntimeError: queue broker unreachable\n"
    )
    assert hooks_run(app) == ["drain consumer", "drain async"]  # the others ran
    assert app.rpcctl("ping", "--ready").returncode == 3

    refused = app.rpcctl("resume")
    assert refused.returncode == 1
    assert refused.stdout == f"{app.node}: still drained (2 on_resume hooks ran)\n"
    assert refused.stderr == (
        "rpcctl: error: still drained: on_resume hook failed: "
        "drainapp.flaky_resume: RuntimeError: queue broker unreachable "
        "(run resume again once fixed)\n"
    )
    assert app.rpcctl("ping", "--ready").returncode == 3

    fail.unlink()
    resumed = app.rpcctl("resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)["result"]
    assert report["resumed"] is True
    assert report["failed"] == []
    assert [h["name"] for h in report["hooks"]] == [
        "drainapp.start_consumer",
        "drainapp.flaky_resume",
    ]
    assert app.rpcctl("ping", "--ready").returncode == 0

    # Each drain and resume is kept in the durable history, the failed ones as failed.
    listed = app.rpcctl("history", "--task", "rpcctl.*", "--json")
    assert listed.returncode == 0, listed.stderr
    kept = [(r["task"], r["state"], r["error"]) for r in json.loads(listed.stdout)["result"]]
    assert kept == [
        ("rpcctl.resume", "succeeded", None),
        ("rpcctl.resume", "failed", "hooks failed: drainapp.flaky_resume"),
        ("rpcctl.drain", "failed", "hooks failed: drainapp.flaky_drain"),
    ]


def test_a_hook_that_hangs_holds_up_no_other_command(app: AppProcess) -> None:
    directory = Path(app.env["DRAINAPP_DIR"])
    (directory / "block").touch()
    first = popen_rpcctl("-n", app.node, "drain", "--timeout", str(DEADLINE * 2))
    try:
        wait_until(lambda: "drain blocked" in hooks_run(app), what="the blocking hook")
        # Drained already (before its hooks): another drain says so at once ...
        again = app.rpcctl("drain")
        assert again.returncode == 0, again.stderr
        assert "already drained since " in again.stdout
        assert app.rpcctl("ping", "--ready").returncode == 3
        # ... and a resume is busy, naming the drain that runs.
        busy = app.rpcctl("resume")
        assert busy.returncode == 7
        assert busy.stderr.startswith(
            "rpcctl: error: a drain is running its on_drain hooks (asked by uid="
        )
        assert busy.stderr.endswith("s ago); try again once it ends\n")
    finally:
        (directory / "block").unlink()
    out, err = first.communicate(timeout=DEADLINE)
    assert first.returncode == 0, err
    assert out.endswith("drained: not ready (4 on_drain hooks ran)\n")
    assert app.rpcctl("resume").returncode == 0
    assert app.rpcctl("ping", "--ready").returncode == 0


ACCESS = """\
[identity.deploy]
cookie_file = "deploy.cookie"
allow = ["drain"]

[identity.admin]
cookie_file = "admin.cookie"
allow = ["*"]

[identity.oncall]
cookie_file = "oncall.cookie"
allow = ["read", "drainapp.*"]
"""


def test_drain_needs_the_drain_grant(short_tmp: Path) -> None:
    directory = short_tmp / "a"
    directory.mkdir()
    for name in ("deploy", "admin", "oncall"):
        cookie = directory / f"{name}.cookie"
        cookie.write_text(f"{name}-cookie-0123456789abcdef\n")
        cookie.chmod(0o600)
    access = directory / "access.toml"
    access.write_text(textwrap.dedent(ACCESS))
    access.chmod(0o600)
    app = start_drainapp(directory, {"RPCCTL_ACCESS": str(access)})

    def as_(name: str, *args: str) -> Any:
        cookie = str(directory / f"{name}.cookie")
        return app.rpcctl("--identity", name, "--cookie-file", cookie, *args)

    try:
        for command, action in (("drain", "drain"), ("resume", "resume")):
            refused = as_("oncall", command)
            assert refused.returncode == 5
            assert refused.stdout == ""
            assert refused.stderr == (
                f"rpcctl: error: oncall may not {action} the app (that needs the drain grant)\n"
            )
        assert hooks_run(app) == []
        assert as_("oncall", "ping", "--ready").returncode == 0

        drained = as_("deploy", "drain")
        assert drained.returncode == 0, drained.stderr
        by = json.loads(as_("oncall", "info", "--json").stdout)["result"]["drained"]["by"]
        assert by.startswith("deploy (uid=")
        # "*" holds every grant but the console: drain included.
        assert as_("admin", "resume").returncode == 0
    finally:
        app.close()


def test_drain_on_a_fleet_with_where(short_tmp: Path) -> None:
    old = start_drainapp(short_tmp / "old", {"RPCCTL_APP_VERSION": "1.4.0"})
    new = start_drainapp(short_tmp / "new", {"RPCCTL_APP_VERSION": "1.5.0"})
    try:
        nodes = ["-n", old.node, "-n", new.node]
        table = run_rpcctl(*nodes, "drain", "--where", "version=1.4.0")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["NODE", "OUTCOME", "TIME", "DRAINED"]
        assert any(old.node in line and "drained: not ready" in line for line in lines)
        assert any(new.node in line and "skipped" in line for line in lines)
        assert lines[-1].endswith("; 1 skipped by --where")
        assert old.rpcctl("ping", "--ready").returncode == 3
        assert new.rpcctl("ping", "--ready").returncode == 0
        assert hooks_run(new) == []

        back = run_rpcctl(*nodes, "resume", "--json", "--where", "ready=false")
        assert back.returncode == 0, back.stderr
        outcomes = [json.loads(line) for line in back.stdout.splitlines()]
        by_node = {o["node"]: o for o in outcomes if "node" in o}
        assert by_node[old.node]["result"]["resumed"] is True
        assert "skipped" in by_node[new.node]
        assert old.rpcctl("ping", "--ready").returncode == 0
    finally:
        old.close()
        new.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wait-jobs", "-1"], "Invalid value for '--wait-jobs'"),
        (["--wait-jobs", "soon"], "Invalid value for '--wait-jobs'"),
        (["--wait-jobs", "3601"], "Invalid value for '--wait-jobs'"),
        # Refused here, as every seconds option refuses it, not sent for the agent to refuse.
        (["--wait-jobs", "nan"], "Invalid value for '--wait-jobs': 'nan' is not a number."),
    ],
)
def test_bad_wait_jobs_is_a_usage_error(args: list[str], message: str) -> None:
    result = run_rpcctl("-n", "unix:/nonexistent/agent.sock", "drain", *args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.usefixtures("clean_drain")
def test_the_agent_checks_what_arrives(agent_in_process: Any) -> None:
    import rpcctl
    from rpcctl.exceptions import UsageError

    with rpcctl.connect(agent_in_process.node) as conn:  # type: ignore[attr-defined]
        for bad in ("soon", -1.0, protocol.MAX_DRAIN_WAIT + 1, True, math.nan, math.inf):
            # Not a number: the table's binding; out of range: the handler's words.
            words = r"float = 0.0" if type(bad) is not float else r"seconds from 0"
            with pytest.raises(UsageError, match=rf"drain\(\) takes wait_jobs: {words}") as refused:
                conn._connection.reply(conn._connection.request("drain", 5.0, bad))
            assert refused.value.reason == "bad_arguments"
        assert conn.info()["drained"] is None
        report = conn.drain()
        assert report["already"] is False
        assert conn.info()["drained"]["since"] == report["drained"]["since"]
        assert conn.resume()["resumed"] is True


# -- units ----------------------------------------------------------------------------------


@pytest.fixture
def clean_drain() -> Iterator[None]:
    _drain.reset_drain()
    _readiness.set_ready(True)
    try:
        yield
    finally:
        _drain.reset_drain()
        _readiness.set_ready(True)


@pytest.mark.usefixtures("clean_drain")
def test_resume_gives_back_what_the_app_declared() -> None:
    _readiness.set_ready(False)  # the app is still warming up
    _readiness.set_drained(True)
    assert _readiness.ready is False
    _readiness.set_drained(False)
    assert _readiness.ready is False  # resume does not override the app
    _readiness.set_ready(True)
    assert _readiness.ready is True
    _readiness.set_drained(True)
    _readiness.set_ready(True)  # the app cannot undo a drain either
    assert _readiness.ready is False


@pytest.mark.usefixtures("clean_drain")
def test_hooks_must_take_no_arguments() -> None:
    def needs(x: int) -> None: ...

    with pytest.raises(TypeError, match=r"on_drain hook .*needs must be callable without"):
        app_agent.on_drain(needs)
    with pytest.raises(TypeError, match=r"on_resume hook .*needs must be callable without"):
        app_agent.on_resume(needs)

    def once() -> None: ...

    assert app_agent.on_drain(once) is once
    app_agent.on_drain(once)  # a reload registers it again: replaced, not doubled
    assert [name for name, _ in _drain._hooks["drain"]] == [f"{__name__}.{once.__qualname__}"]


def test_the_grant_is_declared_once() -> None:
    from app_agent._server import access as _access

    assert protocol.DRAIN in protocol.GRANTS
    assert _access.GRANTS == protocol.GRANTS
    assert protocol.METHODS["drain"].grant == protocol.DRAIN
    assert protocol.METHODS["resume"].grant == protocol.DRAIN
    reader = _access.Identity("oncall", ("read",))
    assert not reader.may(protocol.DRAIN)
    assert _access.Identity("admin", ("*",)).may(protocol.DRAIN)
