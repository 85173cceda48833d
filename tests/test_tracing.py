"""Trace context: the caller's trace continues into the job's span in the app.

The real OpenTelemetry SDK on both sides: tests/apps/traceapp.py installs a TracerProvider
with an in-memory exporter (as an instrumented app does), and the rpcctl command exports its
own span with the SDK's console exporter.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app_agent.wire import tracecontext
from conftest import APPS, AppProcess, run_rpcctl

TRACEAPP = [sys.executable, str(APPS / "traceapp.py")]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def start_traceapp(directory: Path, **env: str) -> AppProcess:
    return AppProcess(TRACEAPP, node=f"unix:{directory}/run/agent.sock", env=env)


@pytest.fixture
def app(short_tmp: Path) -> Iterator[AppProcess]:
    process = start_traceapp(short_tmp, TRACEAPP_PROVIDER="1")
    try:
        yield process
    finally:
        process.close()


def rpc(app: AppProcess, expr: str, **env: str) -> Any:
    return run_rpcctl("-n", app.node, "rpc", "--json", expr, env=env)


def spans(app: AppProcess, count: int) -> dict[str, dict[str, Any]]:
    """The app's finished spans by name, once there are *count* (this call is not traced)."""
    result = rpc(app, f"traceapp.spans({count})")
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["result"]
    assert len(found) == count, found
    return {s["name"]: s for s in found}


def job_ids(app: AppProcess) -> dict[str, str]:
    listed = json.loads(app.rpcctl("jobs", "--json").stdout)["result"]
    return {j["task"]: j["id"] for j in listed}


@pytest.mark.parametrize("task", ["work", "async_work"])
def test_the_job_span_continues_the_callers_trace(app: AppProcess, task: str) -> None:
    result = rpc(app, f"traceapp.{task}", TRACEPARENT=TRACEPARENT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"] == "done"
    found = spans(app, 2)
    job = found[f"traceapp.{task}"]
    assert job["trace_id"] == TRACE_ID
    assert job["parent_id"] == PARENT_ID
    assert job["remote_parent"] is True
    assert job["kind"] == "SERVER"
    assert job["status"] == "UNSET"
    assert job["attributes"] == {
        "rpcctl.job.id": job_ids(app)[f"traceapp.{task}"],
        "rpcctl.task": f"traceapp.{task}",
        "rpcctl.caller": job["attributes"]["rpcctl.caller"],
        "rpcctl.outcome": "succeeded",
    }
    assert job["attributes"]["rpcctl.caller"].startswith("uid=")
    # The task's own span nests under the job's.
    own = found["db.async_query" if task == "async_work" else "db.query"]
    assert own["trace_id"] == TRACE_ID
    assert own["parent_id"] == job["span_id"]


def test_a_failing_task_sets_the_span_to_error(app: AppProcess) -> None:
    result = rpc(app, "traceapp.fail", TRACEPARENT=TRACEPARENT)
    assert result.returncode == 1
    job = spans(app, 1)["traceapp.fail"]
    assert job["status"] == "ERROR"
    assert job["description"] == "ValueError: bad row"  # the first line
    assert job["attributes"]["rpcctl.outcome"] == "failed"
    assert job["trace_id"] == TRACE_ID


def test_no_trace_no_span(app: AppProcess) -> None:
    assert rpc(app, "traceapp.plain").returncode == 0
    # Not a W3C traceparent: rpcctl drops it, the call goes on untraced.
    for bad in ("garbage", f"00-{'0' * 32}-{PARENT_ID}-01", TRACEPARENT.upper()):
        assert rpc(app, "traceapp.plain", TRACEPARENT=bad).returncode == 0
    assert rpc(app, "traceapp.plain", TRACEPARENT=TRACEPARENT).returncode == 0
    assert list(spans(app, 1)) == ["traceapp.plain"]  # only the traced call's


def test_the_agent_drops_a_bad_traceparent(app: AppProcess) -> None:
    """What arrives is checked on the agent too: a bad value never fails the call."""
    import rpcctl

    with rpcctl.connect(app.node) as conn:
        for bad in ("garbage", 42, ["x"], f"ff-{TRACE_ID}-{PARENT_ID}-01", "x" * 600):
            options = json.dumps({"traceparent": bad})
            reply = conn._connection.request("call", 5.0, "traceapp.plain", "[]", "{}", options)
            assert conn._connection.reply(reply) == "plain"
        conn.traceparent = TRACEPARENT
        assert conn.call("traceapp.plain") == "plain"
    assert list(spans(app, 1)) == ["traceapp.plain"]


def test_the_client_api_takes_a_traceparent(app: AppProcess) -> None:
    import rpcctl
    from rpcctl.exceptions import UsageError

    with rpcctl.connect(app.node, traceparent=TRACEPARENT) as conn:
        assert conn.call("traceapp.work") == "done"
        job_id = conn.start("traceapp.plain", follow=True)
        assert conn.follow(job_id) == "plain"
    found = spans(app, 3)
    assert found["traceapp.work"]["parent_id"] == PARENT_ID
    assert found["traceapp.plain"]["attributes"]["rpcctl.job.id"] == job_id
    with pytest.raises(UsageError, match="is not a W3C traceparent"):
        rpcctl.connect(app.node, traceparent="00-abc-def-01")


def test_the_rpcctl_command_exports_its_own_span(app: AppProcess) -> None:
    result = rpc(app, "traceapp.work", TRACEPARENT=TRACEPARENT, OTEL_TRACES_EXPORTER="console")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"] == "done"  # stdout is the result alone
    exported = json.JSONDecoder().raw_decode(result.stderr[result.stderr.index("{") :])[0]
    assert exported["name"] == "rpcctl rpc"
    assert exported["kind"] == "SpanKind.CLIENT"
    assert exported["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert exported["parent_id"] == f"0x{PARENT_ID}"
    assert exported["attributes"]["rpcctl.command"] == "rpc"
    assert exported["resource"]["attributes"]["service.name"] == "rpcctl"
    # The job's span is the child of the command's.
    job = spans(app, 2)["traceapp.work"]
    assert job["trace_id"] == TRACE_ID
    assert f"0x{job['parent_id']}" == exported["context"]["span_id"]


def test_the_command_span_without_a_caller_trace_and_on_failure(app: AppProcess) -> None:
    result = rpc(app, "traceapp.fail", OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="ci")
    assert result.returncode == 1
    exported = json.JSONDecoder().raw_decode(result.stderr[result.stderr.index("\n{") + 1 :])[0]
    assert exported["parent_id"] is None  # a root span: no TRACEPARENT
    assert exported["status"]["status_code"] == "ERROR"
    assert exported["attributes"]["rpcctl.exit_code"] == 1
    assert exported["resource"]["attributes"]["service.name"] == "ci"
    job = spans(app, 1)["traceapp.fail"]
    assert f"0x{job['trace_id']}" == exported["context"]["trace_id"]


def test_an_exporter_that_is_not_installed_is_named(app: AppProcess) -> None:
    result = rpc(app, "traceapp.plain", TRACEPARENT=TRACEPARENT, OTEL_TRACES_EXPORTER="nosuch")
    assert result.returncode == 0
    assert result.stderr == (
        "rpcctl: warning: OTEL_TRACES_EXPORTER: no trace exporter named 'nosuch' is "
        "installed; not exported\n"
    )
    assert spans(app, 1)["traceapp.plain"]["parent_id"] == PARENT_ID  # the trace still goes


def test_nothing_is_imported_without_a_trace(short_tmp: Path) -> None:
    """An app without a provider: opentelemetry is imported for the first traced call only."""
    app = start_traceapp(short_tmp)
    try:
        assert rpc(app, "traceapp.plain").returncode == 0
        assert json.loads(rpc(app, "traceapp.otel_modules").stdout)["result"] == []
        assert rpc(app, "traceapp.plain", TRACEPARENT=TRACEPARENT).returncode == 0
        assert (
            "opentelemetry.trace" in json.loads(rpc(app, "traceapp.otel_modules").stdout)["result"]
        )
    finally:
        app.close()


def test_without_opentelemetry_a_traced_call_runs_as_before(short_tmp: Path) -> None:
    app = start_traceapp(short_tmp, TRACEAPP_HIDE_OTEL="1")
    try:
        for env in ({}, {"TRACEPARENT": TRACEPARENT}):
            result = rpc(app, "traceapp.plain", **env)
            assert (result.returncode, json.loads(result.stdout)["result"]) == (0, "plain")
            failed = rpc(app, "traceapp.fail", **env)
            assert failed.returncode == 1
        assert json.loads(rpc(app, "traceapp.otel_modules").stdout)["result"] == []
    finally:
        app.close()


def test_importing_app_agent_imports_no_opentelemetry() -> None:
    code = (
        "import sys, app_agent, app_agent.wire.tracecontext, rpcctl, rpcctl.client; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "OTEL_"))}
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout == "[]\n"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        (TRACEPARENT, True),
        (f"00-{TRACE_ID}-{PARENT_ID}-00", True),  # not sampled: still a trace
        (f"01-{TRACE_ID}-{PARENT_ID}-01-extra", True),  # a later version may add fields
        (f"00-{TRACE_ID}-{PARENT_ID}-01-extra", False),  # version 00 may not
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", False),
        (f"00-{'0' * 32}-{PARENT_ID}-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        (TRACEPARENT.upper(), False),
        (f"00-{TRACE_ID}-{PARENT_ID}", False),
        (f" {TRACEPARENT}", False),
        (f"{TRACEPARENT}\n", False),
        ("", False),
        (None, False),
        (42, False),
    ],
)
def test_traceparent_format(value: object, valid: bool) -> None:
    assert tracecontext.parse(value) == (value if valid else None)
    if valid:
        assert tracecontext.trace_id(str(value)) == TRACE_ID


def test_the_span_names_the_identity(short_tmp: Path) -> None:
    cookie = short_tmp / "ci.cookie"
    cookie.write_text("ci-cookie-0123456789abcdef\n")
    access = short_tmp / "access.toml"
    access.write_text('[identity.ci]\ncookie_file = "ci.cookie"\nallow = ["*"]\n')
    for path in (cookie, access):
        path.chmod(0o600)
    app = start_traceapp(short_tmp, TRACEAPP_PROVIDER="1", RPCCTL_ACCESS=str(access))
    try:
        as_ci = ["-n", app.node, "--identity", "ci", "--cookie-file", str(cookie), "rpc"]
        result = run_rpcctl(*as_ci, "traceapp.plain", env={"TRACEPARENT": TRACEPARENT})
        assert result.returncode == 0, result.stderr
        listed = run_rpcctl(*as_ci, "--json", "traceapp.spans(1)")
        job = json.loads(listed.stdout)["result"][0]
        assert job["attributes"]["rpcctl.identity"] == "ci"
        assert job["attributes"]["rpcctl.caller"].startswith("ci (uid=")
    finally:
        app.close()


def test_a_fleet_call_carries_the_trace(short_tmp: Path) -> None:
    apps = [start_traceapp(short_tmp / n, TRACEAPP_PROVIDER="1") for n in ("a", "b")]
    try:
        nodes = [arg for a in apps for arg in ("-n", a.node)]
        result = run_rpcctl(*nodes, "rpc", "traceapp.plain", env={"TRACEPARENT": TRACEPARENT})
        assert result.returncode == 0, result.stderr
        for app in apps:
            job = spans(app, 1)["traceapp.plain"]
            assert (job["trace_id"], job["parent_id"]) == (TRACE_ID, PARENT_ID)
    finally:
        for app in apps:
            app.close()
