"""rpcctl health: the app's checks and the built-in ones, through real agents."""

from __future__ import annotations

import json
import re
from pathlib import Path

from introspect_support import as_json, detach, last_line, ok, start_introapp

from conftest import (
    AppProcess,
    run_rpcctl,
    wait_until,
)

# -- health --------------------------------------------------------------------------------------


def test_health_passes_with_every_check_listed(app: AppProcess, loop_app: AppProcess) -> None:
    text = ok(app.rpcctl("health")).stdout
    assert re.search(r"^ok    agent\.jobs +\d+ ms  \d+ jobs? running$", text, re.M)
    assert re.search(r"^ok    introapp\.database +\d+ ms$", text, re.M)
    assert re.search(r"^ok    introapp\.slow +\d+ ms$", text, re.M)
    assert "agent.event_loop" not in text  # no loop, no loop check
    assert text.endswith("healthy: 3 checks passed\n")
    report = as_json(loop_app.rpcctl("health", "--json"))
    assert report["healthy"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["agent.event_loop"]["ok"]
    assert checks["agent.event_loop"]["builtin"]
    assert re.fullmatch(r"lag \d+\.\d ms", checks["agent.event_loop"]["message"])
    assert not checks["introapp.database"]["builtin"]


def test_failing_check_exits_8_naming_it(app: AppProcess) -> None:
    ok(app.rpcctl("rpc", "introapp.set_sick(True)"))
    try:
        text = app.rpcctl("health")
        as_json_result = app.rpcctl("health", "--json")
    finally:
        ok(app.rpcctl("rpc", "introapp.set_sick(False)"))
    assert text.returncode == 8
    assert last_line(text) == "rpcctl: error: unhealthy: introapp.database: database unreachable"
    assert re.search(r"^FAIL  introapp\.database +\d+ ms  database unreachable$", text.stdout, re.M)
    assert text.stdout.endswith("unhealthy: 1 of 3 checks failed\n")
    assert as_json_result.returncode == 8
    error = json.loads(as_json_result.stdout)["error"]
    assert (error["kind"], error["exit_code"]) == ("unhealthy", 8)
    failed = [c for c in error["checks"] if not c["ok"]]
    assert failed == [
        {
            "name": "introapp.database",
            "builtin": False,
            "ok": False,
            "message": "database unreachable",
            "type": "ConnectionError",
            "duration_s": failed[0]["duration_s"],
        }
    ]
    ok(app.rpcctl("health"))


def test_a_hanging_check_fails_at_its_timeout_without_blocking_the_others(
    app: AppProcess,
) -> None:
    ok(app.rpcctl("rpc", "introapp.set_hang(True)"))
    try:
        first = app.rpcctl("health", "--json")
        again = app.rpcctl("health", "--timeout", "0.2", "--json")
    finally:
        ok(app.rpcctl("rpc", "introapp.set_hang(False)"))
    assert first.returncode == 8
    checks = {c["name"]: c for c in json.loads(first.stdout)["error"]["checks"]}
    assert checks["introapp.slow"]["message"] == "did not finish within 0.5s"
    assert checks["introapp.database"]["ok"]
    assert checks["agent.jobs"]["ok"]
    # Still hanging: not started a second time, reported as the earlier run.
    assert again.returncode == 8
    checks = {c["name"]: c for c in json.loads(again.stdout)["error"]["checks"]}
    assert re.fullmatch(
        r"has not returned since an earlier run \d+\.\ds ago \(hung\)",
        checks["introapp.slow"]["message"],
    )
    wait_until(lambda: app.rpcctl("health").returncode == 0, what="the check to recover")


def test_health_timeout_caps_each_check(app: AppProcess) -> None:
    ok(app.rpcctl("rpc", "introapp.set_hang(True)"))
    try:
        result = app.rpcctl("health", "--timeout", "0.2")
    finally:
        ok(app.rpcctl("rpc", "introapp.set_hang(False)"))
    assert result.returncode == 8
    assert (
        last_line(result) == "rpcctl: error: unhealthy: introapp.slow: did not finish within 0.2s"
    )
    wait_until(lambda: app.rpcctl("health").returncode == 0, what="the check to recover")


def test_a_job_past_its_timeout_is_unhealthy(app: AppProcess, short_tmp: Path) -> None:
    gate = short_tmp / "gate"
    job = detach(app, f"introapp.stubborn({str(gate)!r})")
    try:
        wait_until(lambda: app.rpcctl("health").returncode == 8, what="the job to overrun")
        result = app.rpcctl("health")
    finally:
        gate.touch()
    assert re.search(
        rf"agent\.jobs: job {job} \(introapp\.stubborn\) has run \d+\.\ds, past its timeout "
        r"of 0\.3s",
        last_line(result),
    )
    assert app.rpcctl("wait", job).returncode == 4  # it timed out
    ok(app.rpcctl("health"))


def test_fleet_health_names_the_sick_node(app: AppProcess, short_tmp: Path) -> None:
    sick = start_introapp(short_tmp, "sick", INTROAPP_SICK="1")
    try:
        result = run_rpcctl("-n", app.node, "-n", sick.node, "health")
        lines = run_rpcctl("-n", app.node, "-n", sick.node, "health", "--json")
    finally:
        sick.close()
    assert result.returncode == 8, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:3]}
    assert re.search(r"\bok\b .* healthy: 3 checks passed$", rows[app.node])
    assert re.search(
        r"\bunhealthy\b .* unhealthy: introapp\.database: database unreachable$", rows[sick.node]
    )
    assert result.stdout.splitlines()[-1].startswith("1/2 nodes ok in ")
    assert lines.returncode == 8
    by_node = {d["node"]: d for d in map(json.loads, lines.stdout.splitlines()) if "node" in d}
    assert by_node[app.node]["result"]["healthy"] is True
    assert by_node[sick.node]["error"]["exit_code"] == 8


def test_health_of_nothing_is_unreachable(short_tmp: Path) -> None:
    result = run_rpcctl("-n", f"unix:{short_tmp}/none.sock", "health")
    assert result.returncode == 3
    assert last_line(result).startswith("rpcctl: error: ")
