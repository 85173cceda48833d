"""Long-running tasks: live output, progress, jobs that outlive their client, cancellation,
agent-side timeouts and run-once locks, with real processes."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from conftest import DEADLINE, SAMPLEAPP, AppProcess, popen_rpcctl, wait_until
from conftest import listed_jobs as jobs


def test_output_arrives_live_before_the_task_ends(sample_app: AppProcess, short_tmp: Path) -> None:
    """The client shows early lines while the task is still blocked on its last one."""
    gate = short_tmp / "gate"
    client = popen_rpcctl("-n", sample_app.node, "rpc", f'sampleapp.chatty(10, gate="{gate}")')
    try:
        assert client.stdout is not None
        seen = [client.stdout.readline() for _ in range(9)]
        assert seen == [f"line {i}\n" for i in range(1, 10)]
        assert client.poll() is None  # nine lines shown; the task still waits for the gate
        assert [j["state"] for j in jobs(sample_app) if j["task"] == "sampleapp.chatty"] == [
            "running"
        ]
        gate.touch()
        out, err = client.communicate(timeout=DEADLINE)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, err
    assert out == "line 10\n10\n"  # the last line, then the result
    assert "to stderr" in err  # stderr kept apart
    assert "WARNING sampleapp.chatty: logged at warning" in err  # stdlib logging too
    assert "progress: 10/10 step 10" in err  # plain progress lines when not on a terminal


def test_json_events(sample_app: AppProcess) -> None:
    result = sample_app.rpcctl("rpc", "--json", "sampleapp.chatty(2)")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e.get("type") for e in lines[:-1]] == [
        "stdout",
        "progress",
        "stderr",
        "stderr",
        "stdout",
        "progress",
    ]
    assert lines[1] == {**lines[1], "done": 1, "total": 2, "message": "step 1"}
    assert lines[-1] == {"ok": True, "result": 2}


def test_host_output_from_other_threads_is_not_captured(short_tmp: Path) -> None:
    import threading

    import app_agent
    import rpcctl
    import sampleapp  # noqa: F401

    seen: list[dict[str, Any]] = []
    printed = threading.Event()

    def host_thread() -> None:
        print("host output")  # while a job runs
        printed.set()

    # Started here, not in a fixture: pytest swaps sys.stdout between a test's phases.
    with (
        app_agent.start(node=f"unix:{short_tmp}/a.sock") as agent,
        rpcctl.connect(agent.node) as app,
    ):
        job = app.start("sampleapp.cancellable", [30.0])
        threading.Thread(target=host_thread).start()
        printed.wait(DEADLINE)
        app.cancel(job)
        with pytest.raises(rpcctl.TaskFailed, match="was cancelled"):
            app.follow(job, on_event=seen.append)
    lines = [e.get("line") for e in seen]
    assert "host output" not in lines
    assert "stopping early" in lines


def test_detach_jobs_logs_wait_from_other_processes(sample_app: AppProcess) -> None:
    started = sample_app.rpcctl("rpc", "--detach", "sampleapp.chatty(3, 0.2)")
    assert started.returncode == 0
    job_id = started.stdout.strip()
    assert f"rpcctl logs {job_id} --follow" in started.stderr
    listed = {j["id"]: j for j in jobs(sample_app)}
    assert listed[job_id]["task"] == "sampleapp.chatty"
    follow = sample_app.rpcctl("logs", job_id, "--follow")
    assert follow.stdout == "line 1\nline 2\nline 3\n"
    waited = sample_app.rpcctl("wait", job_id)
    assert (waited.returncode, waited.stdout) == (0, "3\n")
    replay = sample_app.rpcctl("logs", job_id)  # after the end: replayed from the start
    assert replay.stdout == "line 1\nline 2\nline 3\n"
    as_json = [
        json.loads(line) for line in sample_app.rpcctl("logs", "--json", job_id).stdout.splitlines()
    ]
    assert [e["line"] for e in as_json[:-1] if e.get("type") == "stdout"] == [
        "line 1",
        "line 2",
        "line 3",
    ]
    assert as_json[-1]["ok"] is True
    assert as_json[-1]["result"]["state"] == "succeeded"
    finished = {j["id"]: j for j in jobs(sample_app)}[job_id]
    assert finished["state"] == "succeeded"
    assert "result" not in finished  # the listing never ships results; wait and logs do


def test_cancel_from_another_process(sample_app: AppProcess) -> None:
    job_id = sample_app.rpcctl("rpc", "--detach", "sampleapp.cancellable(60)").stdout.strip()
    cancelled = sample_app.rpcctl("cancel", job_id)
    assert cancelled.stdout == f"cancellation requested for job {job_id}\n"
    waited = sample_app.rpcctl("wait", job_id)
    assert waited.returncode == 1
    assert f"sampleapp.cancellable was cancelled (job {job_id})" in waited.stderr
    assert sample_app.rpcctl("logs", job_id).stdout == "stopping early\n"
    again = sample_app.rpcctl("cancel", job_id)
    assert again.stdout == f"job {job_id} already ended (cancelled)\n"


def test_cancel_an_async_task(sample_app: AppProcess) -> None:
    job_id = sample_app.rpcctl("rpc", "--detach", "sampleapp.async_wait(60)").stdout.strip()
    wait_until(lambda: "waiting" in sample_app.rpcctl("logs", job_id).stdout)
    assert sample_app.rpcctl("cancel", job_id).returncode == 0
    waited = sample_app.rpcctl("wait", job_id)
    assert waited.returncode == 1
    assert "was cancelled" in waited.stderr


def test_unknown_job_is_a_usage_error(sample_app: AppProcess) -> None:
    for command in (["logs"], ["logs", "--follow"], ["wait"], ["cancel"]):
        result = sample_app.rpcctl(*command, "deadbeef")
        assert result.returncode == 2, command
        assert "no job 'deadbeef'" in result.stderr


def test_client_timeout_names_the_job_which_goes_on(sample_app: AppProcess) -> None:
    result = sample_app.rpcctl("rpc", "--timeout", "0.2", "sampleapp.sleep(1.5)")
    assert result.returncode == 4
    job_id = result.stderr.split("as job ")[1].split(":")[0]
    assert f"`rpcctl logs {job_id} --follow`" in result.stderr
    waited = sample_app.rpcctl("wait", job_id)
    assert (waited.returncode, waited.stdout) == (0, "1.5\n")


def test_killed_client_leaves_the_job_running_to_success(sample_app: AppProcess) -> None:
    client = popen_rpcctl("-n", sample_app.node, "rpc", "sampleapp.chatty(4, 0.3)")
    assert client.stdout is not None
    assert client.stdout.readline() == "line 1\n"
    client.send_signal(signal.SIGKILL)
    client.communicate()
    job = next(j for j in jobs(sample_app) if j["task"] == "sampleapp.chatty")
    waited = sample_app.rpcctl("wait", job["id"])
    assert waited.stdout == "4\n"
    job = next(j for j in jobs(sample_app) if j["id"] == job["id"])
    assert job["state"] == "succeeded"


def test_agent_side_timeout(sample_app: AppProcess) -> None:
    result = sample_app.rpcctl("rpc", "sampleapp.limited")
    assert result.returncode == 4
    assert "sampleapp.limited exceeded its timeout of 0.3s" in result.stderr
    assert sample_app.rpcctl("ping").returncode == 0


def test_output_is_bounded(agent_in_process: Any) -> None:
    from app_agent._jobs import job as _job
    from app_agent._jobs import table as _jobs
    from app_agent._registry import registry

    task = registry.get("sampleapp.echo")
    job = _jobs.Job("bounded", task, "test")  # type: ignore[arg-type]
    for i in range(_job.MAX_EVENTS + 500):
        job.write("stdout", f"{i}\n")
    job.write("stdout", "x" * (3 * _job.MAX_LINE))  # one huge line without a newline
    snapshot = job.events_since(0, 0)
    assert len(snapshot["events"]) <= _job.MAX_EVENTS
    assert snapshot["dropped"] >= 500
    assert all(len(e["line"]) <= _job.MAX_LINE for e in snapshot["events"])


# -- locks ----------------------------------------------------------------------------------


def test_lock_busy_fails_at_once_or_waits(sample_app: AppProcess) -> None:
    holder = sample_app.rpcctl("rpc", "--detach", "sampleapp.locked(120)").stdout.strip()
    wait_until(lambda: "holding the lock" in sample_app.rpcctl("logs", holder).stdout)
    busy = sample_app.rpcctl("rpc", "sampleapp.locked(0)")
    assert busy.returncode == 7
    assert f"lock 'sample-lock' is held by job {holder} (sampleapp.locked" in busy.stderr
    assert " since " in busy.stderr
    waiter = popen_rpcctl("-n", sample_app.node, "rpc", "--lock-wait", "60", "sampleapp.locked(0)")
    try:
        wait_until(
            lambda: (
                sum(j["task"] == "sampleapp.locked" for j in jobs(sample_app)) == 3
                or waiter.poll() is not None
            ),
            what="the second caller to wait for the lock",
        )
        assert waiter.poll() is None  # still waiting: the holder has not let go
        assert sample_app.rpcctl("cancel", holder).returncode == 0
        out, err = waiter.communicate(timeout=DEADLINE)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    assert waiter.returncode == 0, err
    assert out.endswith("released\n")


def two_apps(short_tmp: Path, locks: str) -> tuple[AppProcess, AppProcess]:
    apps = []
    for n in (1, 2):
        apps.append(
            AppProcess(
                SAMPLEAPP,
                node=f"unix:{short_tmp}/app{n}.sock",
                env={"SAMPLEAPP_LOCKS": locks},
            )
        )
    return apps[0], apps[1]


def check_lock_across_processes(first: AppProcess, second: AppProcess) -> None:
    holder = first.rpcctl("rpc", "--detach", "sampleapp.locked(60)").stdout.strip()
    wait_until(lambda: "holding the lock" in first.rpcctl("logs", holder).stdout)
    busy = second.rpcctl("rpc", "sampleapp.locked(0)")
    assert busy.returncode == 7, busy.stderr
    assert f"held by job {holder} (sampleapp.locked" in busy.stderr
    # The holder dies: its lock goes with it.
    first.proc.kill()
    first.proc.wait()
    freed = second.rpcctl("rpc", "--lock-wait", "30", "sampleapp.locked(0)")
    assert freed.returncode == 0, freed.stderr


def test_file_lock_across_processes(short_tmp: Path) -> None:
    first, second = two_apps(short_tmp, f"file:{short_tmp}/locks")
    try:
        check_lock_across_processes(first, second)
    finally:
        first.close()
        second.close()


@pytest.mark.pg
def test_postgres_advisory_lock_across_processes(short_tmp: Path, pg_server: str) -> None:
    first, second = two_apps(short_tmp, pg_server)
    try:
        check_lock_across_processes(first, second)
    finally:
        first.close()
        second.close()


def test_client_call_can_wait_for_a_lock(agent_in_process: Any) -> None:
    import threading

    import rpcctl

    with rpcctl.connect(agent_in_process.node) as app:
        holder = app.start("sampleapp.locked", [60.0])
        wait_until(lambda: app.job(holder)["state"] == "running")
        with pytest.raises(rpcctl.Busy, match=f"held by job {holder}"):
            app.call("sampleapp.locked", 0)
        results: list[str] = []

        def second() -> None:
            with rpcctl.connect(agent_in_process.node) as other:
                results.append(other.invoke("sampleapp.locked", [0], lock_wait=60))

        waiter = threading.Thread(target=second)
        waiter.start()
        wait_until(lambda: len(app.jobs()) >= 3, what="the waiting call to register")
        app.cancel(holder)
        waiter.join(DEADLINE)
    assert results == ["released"]
