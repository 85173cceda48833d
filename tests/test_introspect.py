"""Introspection: stack, stats, health, profile and log-level, against real agent processes
(tests/apps/introapp.py) through the real rpcctl executable, plus the pieces in-process."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rpyc
from click.testing import CliRunner
from introspect_support import (
    as_json,
    detach,
    functions,
    job_printed,
    last_line,
    ok,
    start_introapp,
    stop_job,
    wait_for_worker,
)

import rpcctl
from app_agent import health_check, wire
from app_agent._introspection import health as _health
from app_agent._introspection import loglevels as _loglevels
from app_agent._introspection import profile as _profile
from conftest import (
    DEADLINE,
    AppProcess,
    run_rpcctl,
    wait_until,
)
from rpcctl import _flamegraph
from rpcctl.cli import cli
from rpcctl.cli.introspect import parse_duration
from rpcctl.client import raise_error
from rpcctl.exceptions import BY_KIND, Unhealthy, UsageError

# -- stack ---------------------------------------------------------------------------------------


def test_stack_json_shows_a_known_thread_and_a_busy_job(app: AppProcess) -> None:
    job = detach(app, "introapp.spin(120)")
    try:
        wait_for_worker(app, job)
        data = as_json(app.rpcctl("stack", "--json"))
    finally:
        stop_job(app, job)
    assert data["pid"] == app.proc.pid
    assert data["asyncio"] is None  # no event loop in this app
    threads = {t["name"]: t for t in data["threads"]}
    known = threads["intro-known"]
    assert (known["daemon"], known["agent"], known["idle"], known["main"]) == (
        False,
        False,
        False,
        False,
    )
    names = functions(known["frames"])
    # Innermost last: the thread's entry, then its body, then the wait it blocks in.
    assert names.index("Thread.run") < names.index("known_thread_body") < len(names) - 1
    assert names[-1] == "Condition.wait"
    body = known["frames"][names.index("known_thread_body")]
    assert body["file"].endswith("introapp.py")
    assert body["code"] == "_known_stop.wait()"
    assert threads["MainThread"]["main"]
    worker = next(t for t in data["threads"] if (t["busy"] or {}).get("job") == job)
    assert worker["name"].startswith("rpcctl-worker-")
    assert (worker["agent"], worker["idle"]) == (True, False)
    assert worker["busy"] == {"job": job, "task": "introapp.spin"}
    names = functions(worker["frames"])
    assert names.index("spin") < names.index("hot_loop")
    assert threads["rpcctl-agent"]["idle"]
    assert data["threads"][0]["main"]  # the main thread first, the idle agent threads last
    assert [t["idle"] for t in data["threads"]] == sorted(t["idle"] for t in data["threads"])


def test_stack_text_folds_idle_agent_threads(app: AppProcess) -> None:
    job = detach(app, "introapp.spin(120)")
    try:
        wait_for_worker(app, job)
        text = ok(app.rpcctl("stack")).stdout
        everything = ok(app.rpcctl("stack", "--all")).stdout
    finally:
        stop_job(app, job)
    assert text.startswith(f"Process {app.proc.pid} (introapp), Python ")
    assert re.search(r'^Thread \d+ "intro-known"$', text, re.M)
    assert "in known_thread_body\n    _known_stop.wait()" in text
    assert re.search(
        rf'"rpcctl-worker-\d+" \(daemon, agent, running job {job} introapp\.spin\)', text
    )
    assert ", in hot_loop\n" in text
    assert re.search(r"^Idle agent threads: .*rpcctl-agent\b", text, re.M)
    assert '"rpcctl-agent" (daemon, agent, idle)' not in text
    assert '"rpcctl-agent" (daemon, agent, idle)' in everything
    assert "asyncio tasks" not in text


def test_stack_shows_the_asyncio_tasks_of_the_app_loop(loop_app: AppProcess) -> None:
    data = as_json(loop_app.rpcctl("stack", "--json"))
    assert data["asyncio"]["running"] is True
    tasks = {t["name"]: t for t in data["asyncio"]["tasks"]}
    waiter = tasks["intro-waiter"]
    assert waiter["coroutine"].endswith(".wait_for_stop")
    assert waiter["state"] == "suspended"
    assert functions(waiter["frames"]) == ["wait_for_stop", "Event.wait"]  # innermost last
    assert waiter["frames"][0]["code"] == "await stop.wait()"
    assert waiter["awaiting"] == "Future (pending)"
    text = ok(loop_app.rpcctl("stack")).stdout
    assert "asyncio tasks on the app's event loop (running):" in text
    assert re.search(r'^Task "intro-waiter" \(suspended\): \S+\.wait_for_stop$', text, re.M)


def test_stack_shows_a_blocked_loop_and_health_fails(loop_app: AppProcess, short_tmp: Path) -> None:
    gate = short_tmp / "gate"
    job = detach(loop_app, f"introapp.block_loop({str(gate)!r})")
    try:
        job_printed(loop_app, job, "blocking")
        result = loop_app.rpcctl("health")
        data = as_json(loop_app.rpcctl("stack", "--json"))
    finally:
        gate.touch()
    assert result.returncode == 8, result.stderr
    assert last_line(result).startswith(
        "rpcctl: error: unhealthy: agent.event_loop: the event loop is blocked"
    )
    assert re.search(r"^FAIL  agent\.event_loop ", result.stdout, re.M)
    assert re.search(r"^ok    introapp\.database ", result.stdout, re.M)
    main = next(t for t in data["threads"] if t["main"])
    assert functions(main["frames"])[-1] == "block_loop"  # time.sleep has no Python frame
    running = [t for t in data["asyncio"]["tasks"] if t["state"] == "running"]
    assert len(running) == 1
    # Once the loop runs again, so does the check.
    wait_until(lambda: loop_app.rpcctl("health").returncode == 0, what="a healthy loop again")
    assert loop_app.rpcctl("wait", job).returncode == 0


# -- log-level -----------------------------------------------------------------------------------


def level_of(app: AppProcess, logger: str) -> dict[str, Any]:
    with rpcctl.connect(app.node) as conn:
        loggers = conn.log_level(logger=logger)["loggers"]
    assert len(loggers) == 1
    entry: dict[str, Any] = loggers[0]
    return entry


def test_log_level_shows_the_configured_levels(app: AppProcess) -> None:
    text = ok(app.rpcctl("log-level")).stdout
    assert re.search(r"^root +INFO$", text, re.M)
    assert re.search(r"^app_agent\.rpyc +WARNING$", text, re.M)
    unknown = as_json(app.rpcctl("log-level", "--logger", "nobody.here", "--json"))["loggers"][0]
    assert unknown == {
        "logger": "nobody.here",
        "level": "NOTSET",
        "effective": "INFO",
        "exists": False,
    }


def test_log_level_for_a_while_reverts_by_itself(app: AppProcess) -> None:
    result = app.rpcctl("log-level", "DEBUG", "--logger", "introapp.revert", "--for", "1s")
    assert re.fullmatch(
        r"introapp\.revert: NOTSET -> DEBUG until \d\d:\d\d:\d\d, then NOTSET\n", ok(result).stdout
    )
    # The client is gone already; the agent puts the old level back on its own.
    wait_until(
        lambda: level_of(app, "introapp.revert")["level"] == "NOTSET", what="the level to revert"
    )
    assert "reverts_to" not in level_of(app, "introapp.revert")


def test_log_level_again_keeps_the_level_to_return_to(app: AppProcess) -> None:
    name = "introapp.twice"
    first = as_json(app.rpcctl("log-level", "WARNING", "--logger", name, "--for", "10m", "--json"))
    assert (first["previous"], first["level"], first["reverts_to"]) == (
        "NOTSET",
        "WARNING",
        "NOTSET",
    )
    second = as_json(app.rpcctl("log-level", "DEBUG", "--logger", name, "--for", "1s", "--json"))
    assert (second["previous"], second["reverts_to"]) == ("WARNING", "NOTSET")
    wait_until(lambda: level_of(app, name)["level"] == "NOTSET", what="the level to revert")
    # A level set without --for stays, and cancels a pending revert.
    ok(app.rpcctl("log-level", "ERROR", "--logger", name, "--for", "10m"))
    ok(app.rpcctl("log-level", "INFO", "--logger", name))
    entry = level_of(app, name)
    assert (entry["level"], "reverts_to" in entry) == ("INFO", False)


def test_structlog_on_stdlib_follows_the_level(app: AppProcess) -> None:
    quiet = ok(app.rpcctl("rpc", 'introapp.emit_debug("marker-quiet")'))
    assert "marker-quiet" not in quiet.stderr
    ok(app.rpcctl("log-level", "debug", "--logger", "introapp"))
    try:
        loud = ok(app.rpcctl("rpc", 'introapp.emit_debug("marker-loud")'))
    finally:
        ok(app.rpcctl("log-level", "NOTSET", "--logger", "introapp"))
    assert "marker-loud" in loud.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["LOUD"], "rpcctl: error: unknown logging level 'LOUD': expected one of NOTSET, DEBUG,"),
        (["DEBUG", "--for", "ten minutes"], "rpcctl: error: bad duration 'ten minutes': "),
        (["DEBUG", "--for", "0s"], "rpcctl: error: bad duration '0s': "),
        (["--for", "10m"], "rpcctl: error: --for needs a LEVEL to set"),
    ],
)
def test_log_level_bad_input_exits_2(app: AppProcess, args: list[str], message: str) -> None:
    result = app.rpcctl("log-level", *args)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(message)


def test_log_level_on_a_fleet(app: AppProcess, loop_app: AppProcess) -> None:
    name = "introapp.fleet"
    result = run_rpcctl("-n", app.node, "-n", loop_app.node, "log-level", "ERROR", "--logger", name)
    try:
        assert result.returncode == 0, result.stdout
        assert result.stdout.count("introapp.fleet: NOTSET -> ERROR") == 2
        assert level_of(loop_app, name)["level"] == "ERROR"
        shown = run_rpcctl("-n", app.node, "-n", loop_app.node, "log-level", "--logger", name)
        assert shown.returncode == 0
        rows = [line for line in shown.stdout.splitlines() if line.startswith("unix:")]
        assert len(rows) == 2
        assert all(row.endswith("  introapp.fleet=ERROR") for row in rows)
    finally:
        run_rpcctl("-n", app.node, "-n", loop_app.node, "log-level", "NOTSET", "--logger", name)


# -- stats ---------------------------------------------------------------------------------------


def test_stats_fields_are_right(short_tmp: Path) -> None:
    before_start = time.time()
    # No durable history: its store (SQLite, 3 descriptors) and writer thread come and go
    # with the jobs below, and this test counts exactly what the tasks open.
    fresh = start_introapp(short_tmp, RPCCTL_HISTORY="off")
    try:
        with rpcctl.connect(fresh.node) as conn:
            before = conn.stats()
            conn.call("introapp.hold_files", 5)
            conn.call("introapp.start_threads", 3)
            conn.call("introapp.allocate", 64)
            conn.call("introapp.spin", 0.2)
            collections = conn.call("introapp.collect")
            after = conn.stats()
    finally:
        fresh.close()
    assert after["pid"] == before["pid"] == fresh.proc.pid
    assert after["app"] == "introapp"
    assert after["node"] == fresh.node
    assert before_start - 2 <= after["started_at"] <= time.time()
    assert after["uptime_s"] >= after["agent_uptime_s"] > 0
    assert after["fds"]["open"] - before["fds"]["open"] == 5
    assert after["fds"]["limit"] is None or after["fds"]["limit"] > after["fds"]["open"]
    assert after["threads"]["python"] - before["threads"]["python"] == 3
    assert after["threads"]["os"] - before["threads"]["os"] == 3
    rss = after["memory"]["rss_bytes"]
    assert rss - before["memory"]["rss_bytes"] >= 48 << 20
    assert after["memory"]["peak_rss_bytes"] >= rss
    cpu = after["cpu"]["user_s"] + after["cpu"]["system_s"]
    assert cpu > before["cpu"]["user_s"] + before["cpu"]["system_s"]
    generations = after["gc"]["generations"]
    assert [g["generation"] for g in generations] == [0, 1, 2]
    assert generations[2]["collections"] >= collections[2] >= 1
    assert after["python"]["version"] == platform.python_version()
    assert after["python"]["executable"] == sys.executable
    assert after["packages"]["rpyc"] == rpyc.__version__
    assert after["packages"]["structlog"] == importlib.metadata.version("structlog")
    assert after["packages"]["rpcctl"] == rpcctl.__version__
    assert "objects" not in after


def test_stats_objects_and_text(fresh_app: AppProcess) -> None:
    ok(fresh_app.rpcctl("rpc", "introapp.make_markers(30000)"))
    data = as_json(fresh_app.rpcctl("stats", "--objects", "3", "--json"))
    assert len(data["objects"]) == 3
    markers = [o for o in data["objects"] if o["type"].endswith(".Marker")]
    assert markers
    assert markers[0]["count"] >= 30000
    text = ok(fresh_app.rpcctl("stats", "--objects", "3")).stdout
    assert text.startswith(f"pid:       {fresh_app.proc.pid} (introapp)\n")
    for label in ("uptime:", "memory:    RSS ", "cpu:       user ", "threads:", "fds:", "gc:"):
        assert f"\n{label}" in text
    assert re.search(r"^  +\d+  \S+\.Marker$", text, re.M)
    bad = fresh_app.rpcctl("stats", "--objects", "-1")
    assert bad.returncode == 2


def test_stats_on_a_fleet(app: AppProcess, loop_app: AppProcess) -> None:
    result = run_rpcctl("-n", app.node, "-n", loop_app.node, "stats", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    pids = {d["node"]: d["result"]["pid"] for d in lines if "node" in d}
    assert pids == {app.node: app.proc.pid, loop_app.node: loop_app.proc.pid}
    table = run_rpcctl("-n", app.node, "-n", loop_app.node, "stats")
    assert re.search(rf"^{re.escape(app.node)} +ok .* pid {app.proc.pid}, up ", table.stdout, re.M)


def test_stack_on_a_fleet_has_a_section_per_node(app: AppProcess, short_tmp: Path) -> None:
    dead = f"unix:{short_tmp}/dead.sock"
    result = run_rpcctl("-n", app.node, "-n", dead, "stack")
    assert result.returncode == 3
    assert f"=== {app.node}\nProcess {app.proc.pid} (introapp)" in result.stdout
    assert f"=== {dead}\nunreachable: " in result.stdout
    assert result.stdout.splitlines()[-1].startswith("1/2 nodes ok in ")


# -- auditing ------------------------------------------------------------------------------------


def test_every_introspection_is_audited(fresh_app: AppProcess) -> None:
    for args in (
        ["stack"],
        ["stats"],
        ["health"],
        ["log-level", "INFO", "--logger", "introapp.audit"],
        ["profile", "--seconds", "0.1"],
    ):
        ok(fresh_app.rpcctl(*args))
    events = [
        json.loads(line.split(" ", 1)[1])
        for line in fresh_app.stderr().splitlines()
        if line.startswith("app_agent {")
    ]
    names = [e["event"] for e in events]
    for event in (
        "introspect.stack",
        "introspect.stats",
        "health.checked",
        "log_level.set",
        "profile.started",
        "profile.finished",
    ):
        assert event in names, names
    changed = next(e for e in events if e["event"] == "log_level.set")
    assert (changed["logger"], changed["new_level"]) == ("introapp.audit", "INFO")
    assert changed["caller"].startswith("uid=")


# -- in-process pieces ---------------------------------------------------------------------------


@pytest.fixture
def no_checks() -> Iterator[None]:
    saved = _health.registry.all()
    _health.reset_health_checks()
    yield
    _health.reset_health_checks()
    for check in saved:
        _health.registry.add(check)


def test_health_check_decorator_forms(no_checks: None) -> None:
    @health_check
    def plain() -> None:
        pass

    @health_check(name="db", timeout=2.0)
    async def named() -> bool:
        return False

    checks = {c.name: c for c in _health.registry.all()}
    assert checks[f"{__name__}.{plain.__qualname__}"].timeout == _health.DEFAULT_TIMEOUT
    assert checks["db"].timeout == 2.0
    outcomes = {o["name"]: o for o in _health.run_checks(_health.registry.all(), 5.0)}
    assert outcomes["db"]["ok"] is False
    assert outcomes["db"]["message"] == "returned False"
    assert outcomes[f"{__name__}.{plain.__qualname__}"]["ok"] is True


def test_health_check_refuses_bad_registrations(no_checks: None) -> None:
    with pytest.raises(TypeError, match="health check needs_an_argument must be callable"):

        @health_check(name="needs_an_argument")
        def needs(value: int) -> None:
            pass

    for bad in (0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            health_check(timeout=bad)
    assert _health.registry.all() == []


def test_checks_run_concurrently_and_a_hung_one_is_not_repeated(no_checks: None) -> None:
    release = threading.Event()
    calls: list[str] = []

    def hangs() -> None:
        calls.append("hangs")
        release.wait(DEADLINE)

    def raises() -> None:
        raise RuntimeError

    checks = [
        _health.Check("hangs", hangs, timeout=0.2),
        _health.Check("raises", raises),
        _health.Check("passes", lambda: "fine"),
    ]
    try:
        first = {o["name"]: o for o in _health.run_checks(checks, 10.0)}
        second = {o["name"]: o for o in _health.run_checks(checks, 10.0)}
    finally:
        release.set()
    assert first["hangs"]["message"] == "did not finish within 0.2s"
    assert (first["raises"]["ok"], first["raises"]["message"]) == (False, "RuntimeError")
    assert (first["passes"]["ok"], first["passes"]["message"]) == (True, "fine")
    assert second["hangs"]["message"].startswith("has not returned since an earlier run")
    assert calls == ["hangs"]


def test_log_levels_revert_and_reset() -> None:
    import logging

    levels = _loglevels.LogLevels()
    logger = logging.getLogger("rpcctl.test.levels")
    logger.setLevel(logging.WARNING)
    reverted: list[tuple[str, str, str]] = []
    try:
        levels.set("rpcctl.test.levels", logging.DEBUG, 0.05, lambda *a: reverted.append(a))
        wait_until(lambda: logger.level == logging.WARNING, what="the revert")
        assert reverted == [("rpcctl.test.levels", "DEBUG", "WARNING")]
        levels.set("rpcctl.test.levels", logging.ERROR, 3600)
        levels.reset()
        assert logger.level == logging.WARNING
        with pytest.raises(_loglevels.LevelError, match="positive number of seconds"):
            levels.set("rpcctl.test.levels", logging.DEBUG, 0)
    finally:
        levels.reset()
        logger.setLevel(logging.NOTSET)
    assert _loglevels.parse_level("warning") == logging.WARNING
    assert _loglevels.parse_level("15") == 15
    with pytest.raises(_loglevels.LevelError, match="unknown logging level"):
        _loglevels.parse_level("LOUD")


def busy_function(stop: threading.Event) -> int:
    total = 0
    while not stop.is_set():
        for i in range(1000):
            total += i
    return total


def test_profiler_in_process_finds_the_busy_thread_and_is_exclusive() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=busy_function, args=(stop,), name="busy-worker")
    worker.start()
    results: list[dict[str, Any]] = []
    background = threading.Thread(
        target=lambda: results.append(_profile.profile(0.5, 200.0, False, "test"))
    )
    try:
        background.start()
        wait_until(lambda: _profile._active is not None, what="the profile to start")
        with pytest.raises(_profile.ProfilerBusy, match="asked by test"):
            _profile.profile(1.0, 100.0, False, "second")
        background.join()
    finally:
        stop.set()
        worker.join()
    data = results[0]
    names = [f["name"] for f in data["frames"]]
    busy = [s for s in data["stacks"] if s["thread"] == "busy-worker"]
    assert busy
    # Every sample of the busy thread is inside busy_function (innermost, or in what it
    # calls, such as the Event it checks).
    assert all("busy_function" in [names[i] for i in s["frames"]] for s in busy)
    assert data["samples"] == sum(s["count"] for s in data["stacks"])
    assert data["rate"] == 200.0


def test_flamegraph_formats() -> None:
    profile = {
        "rate": 100.0,
        "seconds": 1.0,
        "samples": 5,
        "frames": [
            {"name": "<module>", "file": "/a/app.py", "short": "app.py", "line": 1},
            {"name": "work", "file": "/a/app.py", "short": "app.py", "line": 5},
            {"name": "a;b", "file": "/a/x.py", "short": "x.py", "line": 9},
        ],
        "stacks": [
            {"thread": "MainThread", "frames": [0, 1], "count": 3},
            {"thread": "MainThread", "frames": [0, 2], "count": 2},
        ],
    }
    stacks = _flamegraph.stacks(profile)
    assert _flamegraph.collapsed(stacks + stacks[:1]) == (
        "MainThread;<module> (app.py:1);work (app.py:5) 6\n"
        "MainThread;<module> (app.py:1);a,b (x.py:9) 2\n"
    )
    merged = _flamegraph.collapsed(_flamegraph.stacks(profile, prefix=("node-1",)))
    assert merged.startswith("node-1;MainThread;")
    root = ET.fromstring(_flamegraph.svg(stacks, "a <title> & more"))  # noqa: S314
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert texts[0] == "a <title> & more"
    assert any((t or "").startswith("<module> (app.py:1) — 5 samples (100.00%)") for t in texts)
    scope = _flamegraph.speedscope([("", profile)], "p")
    assert scope["profiles"][0]["weights"] == [0.03, 0.02]
    assert scope["profiles"][0]["samples"] == [[0, 1], [0, 2]]


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "10m", "1.5h", "500ms", "1d")] == [
        90.0,
        30.0,
        600.0,
        5400.0,
        0.5,
        86400.0,
    ]
    for bad in ("", "10x", "-5s", "0", "m"):
        with pytest.raises(UsageError, match="bad duration"):
            parse_duration(bad)


def test_one_duration_format_for_stats_and_the_fleet_table() -> None:
    from rpcctl._introspect_render import duration
    from rpcctl.cli._fleet_table import info_cells

    assert [duration(s) for s in (5.7, 125, 3725, 93784)] == [
        "5s",
        "2m 05s",
        "1h 02m 05s",
        "1d 02h 03m",
    ]
    assert info_cells({"uptime_s": 3725.2})[2] == "1h 02m 05s"
    assert info_cells({"uptime_s": None})[2] == ""  # an agent that did not say


def test_unhealthy_is_exit_8() -> None:
    assert wire.ErrorKind.UNHEALTHY.exit_code == 8
    assert BY_KIND[wire.ErrorKind.UNHEALTHY] is Unhealthy
    with pytest.raises(Unhealthy) as caught:
        raise_error({"kind": "unhealthy", "message": "db down"})
    assert caught.value.exit_code == 8


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("stats", ("3",)),
        ("stats", (-1,)),
        ("health", (0.0,)),
        ("health", ("10",)),
        ("profile", (1.0, 0.5, False)),
        ("profile", (0.0, 100.0, False)),
        ("profile", (1.0, 100.0, "yes")),
        ("log_level", ("root", "LOUD", None)),
        ("log_level", ("root", "DEBUG", "10m")),
        ("log_level", (5, "DEBUG", None)),
    ],
)
def test_the_service_refuses_bad_arguments(
    agent_in_process: Any, method: str, args: tuple[Any, ...]
) -> None:
    with rpcctl.connect(agent_in_process.node) as conn, pytest.raises(UsageError):
        conn._connection.reply(conn._connection.request(method, 5.0, *args))


def test_cli_runner_stack_and_health_in_process(agent_in_process: Any, no_checks: None) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["-n", agent_in_process.node, "stack", "--json"])
    assert result.exit_code == 0, result.stderr
    threads = json.loads(result.stdout)["result"]["threads"]
    assert any(t["name"] == "MainThread" and "test_cli_runner_stack" in str(t) for t in threads)

    @health_check(name="inproc.broken")
    def broken() -> None:
        msg = "broken on purpose"
        raise OSError(msg)

    result = runner.invoke(cli, ["-n", agent_in_process.node, "health"])
    assert result.exit_code == 8
    assert result.stderr == "rpcctl: error: unhealthy: inproc.broken: broken on purpose\n"


def test_an_agent_without_the_method_is_a_clear_usage_error(
    agent_in_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app_agent._service import AgentService

    monkeypatch.delattr(AgentService, "exposed_stack")  # an agent from before `stack`
    result = CliRunner().invoke(cli, ["-n", agent_in_process.node, "stack"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"rpcctl: error: {agent_in_process.node}: the agent does not offer `stack`; it runs "
        "an rpcctl older than this client (see `rpcctl info`)\n"
    )


def test_nothing_of_it_lingers_when_idle(fresh_app: AppProcess) -> None:
    with rpcctl.connect(fresh_app.node) as conn:
        baseline = {t["name"] for t in conn.stack()["threads"]}
        conn.health()
        conn.profile(0.1)
        conn.log_level("INFO", "introapp.idle")
        conn.stats(objects=3)

        def back_to_baseline() -> bool:
            return {t["name"] for t in conn.stack()["threads"]} == baseline

        wait_until(back_to_baseline, what="the introspection threads to end")
    assert not any(name.startswith(("rpcctl-health", "rpcctl-profiler")) for name in baseline)
