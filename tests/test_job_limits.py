"""Jobs under stress: output that must not be lost (or whose loss is reported), results too
big to keep, jobs that must never stay running, worker threads that must go away."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import DEADLINE, AppProcess, popen_rpcctl, wait_until
from conftest import listed_jobs as jobs


def job_state(app: AppProcess, job_id: str) -> str:
    return str({j["id"]: j for j in jobs(app)}[job_id]["state"])


def proc_status(pid: int, key: str) -> int:
    """A number from /proc/PID/status (VmRSS in kB, Threads)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def check_sequence(events: list[dict[str, Any]], total: int) -> int:
    """The events cover seq 0..total-1 exactly once, with "dropped" notes for the gaps; the
    number of events dropped."""
    expected = dropped = 0
    for event in events:
        if event.get("type") == "dropped":
            assert event["from_seq"] == expected, event
            expected += event["count"]
            dropped += event["count"]
        else:
            assert event["seq"] == expected, event
            expected += 1
    assert expected == total
    return dropped


# -- 7: live output is never dropped silently ----------------------------------------------


def test_rpc_shows_every_line_of_a_big_output(sample_app: AppProcess) -> None:
    """A client that keeps up gets every line: the task waits for it, nothing is dropped."""
    count = 200_000
    result = sample_app.rpcctl("rpc", "--json", f"sampleapp.lines({count})", timeout=300)
    assert result.returncode == 0, result.stderr
    *events, envelope = [json.loads(line) for line in result.stdout.splitlines()]
    assert envelope == {"ok": True, "result": count}
    assert [e["seq"] for e in events] == list(range(count))
    assert [e["line"] for e in events] == [f"line {i}" for i in range(count)]
    assert result.stderr == ""

    human = sample_app.rpcctl("rpc", f"sampleapp.lines({count})", timeout=300)
    assert human.returncode == 0, human.stderr
    assert human.stdout == "".join(f"line {i}\n" for i in range(count)) + f"{count}\n"
    assert human.stderr == ""


def test_a_detached_job_keeps_the_last_events_and_logs_says_how_many_were_dropped(
    sample_app: AppProcess,
) -> None:
    from app_agent._jobs.job import MAX_EVENTS

    count = MAX_EVENTS + 40_000
    job_id = sample_app.rpcctl("rpc", "--detach", f"sampleapp.lines({count})").stdout.strip()
    waited = sample_app.rpcctl("wait", job_id)  # polls the state only: nobody reads the output
    assert (waited.returncode, waited.stdout) == (0, f"{count}\n")

    logs = sample_app.rpcctl("logs", job_id)
    assert logs.returncode == 0
    assert logs.stdout == "".join(f"line {i}\n" for i in range(40_000, count))
    assert logs.stderr.splitlines() == [
        "rpcctl: 40,000 output events were dropped: the agent keeps a bounded buffer per job "
        "and drops the oldest lines when no client reads them in time (see docs/jobs.md)"
    ]
    replay = sample_app.rpcctl("logs", "--json", job_id).stdout.splitlines()
    as_json = [json.loads(line) for line in replay]
    assert as_json[0] == {"type": "dropped", "from_seq": 0, "count": 40_000}
    assert check_sequence(as_json[:-1], count) == 40_000


def test_a_follower_far_behind_is_left_behind_and_told_how_much_it_missed(
    sample_app: AppProcess,
) -> None:
    """A client that stops reading does not hold the task for ever: past the grace period
    the oldest events go, and the client reports the gap (stderr, and --json)."""
    grace = sample_app.rpcctl("rpc", "sampleapp.set_follower_grace(0.2)")
    assert grace.returncode == 0, grace.stderr
    count = 200_000
    client = popen_rpcctl("-n", sample_app.node, "rpc", "--json", f"sampleapp.lines({count})")
    try:
        # Nobody reads the client's stdout: it blocks on its pipe and stops asking for events.
        wait_until(
            lambda: (
                [j["state"] for j in jobs(sample_app) if j["task"] == "sampleapp.lines"]
                == ["succeeded"]
            ),
            timeout=max(DEADLINE, 60),
            what="the task to finish without its follower",
        )
        out, err = client.communicate(timeout=max(DEADLINE, 60))
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, err
    *events, envelope = [json.loads(line) for line in out.splitlines()]
    dropped = check_sequence(events, count)
    assert dropped > 0
    assert envelope == {"ok": True, "result": count, "dropped": dropped}
    assert f"rpcctl: {dropped:,} output events were dropped" in err


# -- 7: flow control, in process --------------------------------------------------------------


@pytest.fixture
def echo_task() -> Any:
    import sampleapp  # noqa: F401  (registers its tasks)
    from app_agent._registry import registry

    return registry.get("sampleapp.echo")


def writer(job: Any, count: int) -> threading.Thread:
    """A thread that plays the job's task: it writes *count* lines as the job's own thread."""

    def write() -> None:
        job.thread = threading.get_ident()
        for i in range(count):
            job.write("stdout", f"{i}\n")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_the_task_waits_for_a_follower_that_keeps_up(echo_task: Any) -> None:
    from app_agent._jobs import job as _job
    from app_agent._jobs import table as _jobs

    job = _jobs.Job("flow", echo_task, "test")
    job.attach(1)
    count = 3 * _job.MAX_EVENTS
    thread = writer(job, count)
    cursor, lines = 0, []
    while len(lines) < count:
        snapshot = job.events_since(cursor, DEADLINE, follower=1)
        assert snapshot["dropped"] == 0
        lines += [e["line"] for e in snapshot["events"]]
        cursor = snapshot["cursor"]
    thread.join(DEADLINE)
    assert lines == [str(i) for i in range(count)]


@pytest.mark.parametrize("how", ["cancel", "expire", "detach"])
def test_a_waiting_task_goes_on_when_cancelled_timed_out_or_left(echo_task: Any, how: str) -> None:
    from app_agent._jobs import job as _job
    from app_agent._jobs import table as _jobs

    echo_task = dataclasses.replace(echo_task, timeout=1.0)
    job = _jobs.Job("flow", echo_task, "test")
    job.attach(1)  # a follower that never reads
    thread = writer(job, _job.MAX_EVENTS + 100)
    # The buffer is full and the task waits for the follower (for up to FOLLOWER_GRACE).
    wait_until(lambda: job.events_since(_jobs.SUMMARY_ONLY, 0)["cursor"] == _job.MAX_EVENTS)
    assert thread.is_alive()
    {"cancel": job.cancel, "expire": job.expire, "detach": lambda: job.detach(1)}[how]()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert job.events_since(0, 0)["dropped"] > 0


def test_only_the_jobs_own_thread_ever_waits(echo_task: Any) -> None:
    """Output that reaches a job from another thread (the app's event loop running an async
    task, a thread that inherited the job's context) is dropped rather than block it."""
    from app_agent._jobs import job as _job
    from app_agent._jobs import table as _jobs

    job = _jobs.Job("flow", echo_task, "test")
    job.attach(1)
    job.thread = -1  # the task runs elsewhere
    for i in range(_job.MAX_EVENTS + 100):
        job.write("stdout", f"{i}\n")
    assert job.events_since(0, 0)["dropped"] == 100


@pytest.mark.parametrize("via", ["logging", "structlog"])
def test_output_written_under_a_logging_lock_never_waits(
    echo_task: Any, monkeypatch: pytest.MonkeyPatch, via: str
) -> None:
    """The capture's logging handler lock and structlog's per-file lock (as
    app_agent.configure_logging sets structlog up) are shared with the app's other threads:
    a task must not wait for its follower while it holds one of them."""
    import io
    import logging

    import structlog

    from app_agent._jobs import capture as _capture
    from app_agent._jobs import job as _job
    from app_agent._jobs import table as _jobs

    monkeypatch.setattr(_job, "FOLLOWER_GRACE", 3600.0)  # a follower that stays "live"
    monkeypatch.setattr(sys, "stderr", _capture._JobStream(io.StringIO(), "stderr"))
    job = _jobs.Job("locked", echo_task, "test")
    job.attach(1)  # ... and never reads
    logger = logging.getLogger("test_jobs_hardening.locked")
    logger.propagate = False
    logger.addHandler(_capture._handler)
    printer = structlog.WriteLoggerFactory(_capture.current_stderr)()  # configure_logging's

    def task() -> None:
        _capture.current_job.set(job)
        job.thread = threading.get_ident()
        for i in range(_job.MAX_EVENTS + 100):
            if via == "logging":
                logger.warning("record %d", i)
            else:
                printer.msg(f"event {i}")

    thread = threading.Thread(target=task, daemon=True)
    try:
        thread.start()
        thread.join(DEADLINE)
        assert not thread.is_alive(), "the task waited while holding a logging lock"
    finally:
        logger.removeHandler(_capture._handler)
        job.detach(1)
    assert job.events_since(0, 0)["dropped"] == 100


def test_the_capture_marks_the_records_it_writes_on_their_own_thread_only() -> None:
    """writing_log() is what keeps a record's write from waiting: true while the capture's
    handler or current_stderr writes, on that thread only, and false again after, even when
    the write fails; a plain print() to the captured stream is not a record."""
    import contextvars
    import io
    import logging

    from app_agent._jobs import capture as _capture

    seen: list[tuple[str, bool, bool]] = []

    class Recorder:  # stands in for the job
        def write(self, stream: str, text: str) -> None:
            elsewhere: list[bool] = []
            other = threading.Thread(target=lambda: elsewhere.append(_capture.writing_log()))
            other.start()
            other.join(DEADLINE)
            seen.append((text.strip(), _capture.writing_log(), elsewhere[0]))
            if text.startswith("fail"):
                raise OSError("the job's buffer is gone")

    logger = logging.getLogger("test_jobs_hardening.marked")
    logger.propagate = False
    logger.addHandler(_capture._handler)
    stream = _capture._JobStream(io.StringIO(), "stderr")

    def task() -> None:
        _capture.current_job.set(Recorder())  # type: ignore[arg-type]
        logger.warning("record")
        stream.write("printed\n")  # print()'s way in
        real_stderr = sys.stderr
        sys.stderr = stream
        try:
            _capture.current_stderr.write("structlog\n")
            with contextlib.suppress(OSError):
                _capture.current_stderr.write("fail\n")
        finally:
            sys.stderr = real_stderr

    try:
        contextvars.copy_context().run(task)
    finally:
        logger.removeHandler(_capture._handler)
    assert seen == [
        ("WARNING test_jobs_hardening.marked: record", True, False),
        ("printed", False, False),
        ("structlog", True, False),
        ("fail", True, False),
    ]
    assert not _capture.writing_log()


def test_event_printer_reports_drops_once_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    from rpcctl._render import EventPrinter

    printer = EventPrinter(as_json=False)
    printer({"type": "stdout", "line": "a", "seq": 0})
    printer({"type": "dropped", "from_seq": 1, "count": 12_344})
    printer({"type": "dropped", "from_seq": 12_346, "count": 1})
    printer({"type": "stdout", "line": "b", "seq": 12_347})
    printer.close()
    out, err = capsys.readouterr()
    assert out == "a\nb\n"
    assert err == (
        "rpcctl: 12,345 output events were dropped: the agent keeps a bounded buffer per job "
        "and drops the oldest lines when no client reads them in time (see docs/jobs.md)\n"
    )


# -- 8: finished jobs keep bounded summaries -------------------------------------------------


def test_big_results_are_not_kept_and_the_history_stays_small(sample_app: AppProcess) -> None:
    pid = sample_app.proc.pid
    before = proc_status(pid, "VmRSS")
    ids = []
    for _ in range(5):
        job_id = sample_app.rpcctl("rpc", "--detach", "sampleapp.big_result(20)").stdout.strip()
        wait_until(lambda job_id=job_id: job_state(sample_app, job_id) == "succeeded")
        ids.append(job_id)
    grown_mib = (proc_status(pid, "VmRSS") - before) / 1024
    assert grown_mib < 50, f"the agent grew by {grown_mib:.0f} MiB for five 20 MiB results"

    listed = jobs(sample_app)
    assert not [j for j in listed if "result" in j]  # the listing never ships results
    waited = sample_app.rpcctl("wait", ids[0])
    assert (waited.returncode, waited.stdout) == (0, "")
    assert waited.stderr == (
        "rpcctl: the result (20,971,522 bytes as JSON) was sent to the callers waiting when "
        "the job ended but is not kept: the agent keeps results of up to 1,048,576 bytes\n"
    )
    as_json = json.loads(sample_app.rpcctl("wait", "--json", ids[0]).stdout)
    assert as_json["result"] is None
    assert as_json["result_dropped"].startswith("the result (20,971,522 bytes as JSON)")
    logs = sample_app.rpcctl("logs", ids[0])
    assert (logs.returncode, logs.stdout) == (0, "")
    assert "is not kept" in logs.stderr


def test_a_big_result_still_reaches_the_callers_waiting_for_it(sample_app: AppProcess) -> None:
    import rpcctl

    followed = sample_app.rpcctl("rpc", "sampleapp.big_result(2)")
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "x" * (2 << 20) + "\n"
    with rpcctl.connect(sample_app.node) as app:
        assert app.call("sampleapp.big_result", 2) == "x" * (2 << 20)
    # Afterwards, the history has only the note.
    job_id = next(j["id"] for j in jobs(sample_app) if j["task"] == "sampleapp.big_result")
    assert "is not kept" in sample_app.rpcctl("wait", job_id).stderr


def test_the_history_keeps_within_its_byte_budget(
    echo_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app_agent._jobs import table as _jobs
    from app_agent._jobs.locks import MemoryLocks

    monkeypatch.setattr(_jobs, "HISTORY_BYTES", 2 << 20)
    table = _jobs.JobTable(MemoryLocks())
    for n in range(20):
        job = table.create(echo_task, "test")
        for i in range(2_000):
            job.write("stdout", f"job {n} line {i}\n")
        job.finish(_jobs.SUCCEEDED, result="r" * 100_000, result_bytes=100_002)
        table._retire(job)
    history = table.all()
    assert len(history) == 20
    assert sum(j.kept_bytes() for j in history) <= _jobs.HISTORY_BYTES
    newest, oldest = history[-1], history[0]
    assert newest.summary()["result"] == "r" * 100_000
    assert len(newest.events_since(0, 0)["events"]) == 2_000
    assert oldest.events_since(0, 0)["dropped"] == 2_000
    assert "result" not in oldest.summary()
    assert "keeps at most 2,097,152 bytes" in oldest.summary()["result_dropped"]


def test_the_job_listing_has_no_results_or_tracebacks(echo_task: Any) -> None:
    from app_agent._jobs import table as _jobs

    job = _jobs.Job("x", echo_task, "test")
    job.finish(
        _jobs.FAILED, error={"kind": "task_failed", "message": "m" * 10_000, "traceback": "t"}
    )
    listed = job.summary(full=False)
    assert set(listed["error"]) == {"kind", "message"}
    assert len(listed["error"]["message"]) == 500


# -- 9: no job stays running after a failure ---------------------------------------------------


@pytest.fixture
def shared_client(shared_sample_app: AppProcess) -> Iterator[Any]:
    import rpcctl

    with rpcctl.connect(shared_sample_app.node) as client:
        yield client


@pytest.mark.parametrize("depth", [600, 100_000])
@pytest.mark.parametrize("method", ["call", "run"])
def test_deeply_nested_arguments_are_refused_and_leave_no_job_running(
    shared_sample_app: AppProcess, shared_client: Any, method: str, depth: int
) -> None:
    args_json = "[" + "[" * depth + "]" * depth + "]"
    reply = json.loads(
        shared_client._connection.request(method, DEADLINE, "sampleapp.echo", args_json, "{}")
    )
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "usage"
    assert reply["error"]["message"] == (
        "sampleapp.echo: arguments are nested more than 200 levels deep"
    )
    assert not [j for j in jobs(shared_sample_app) if j["state"] == "running"]


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_deep_arguments_through_the_client_api_are_usage_errors(
    shared_sample_app: AppProcess, shared_client: Any
) -> None:
    import rpcctl

    for method in (shared_client.invoke, shared_client.run):
        with pytest.raises(rpcctl.UsageError) as refused:
            method("sampleapp.echo", [nested(300)])
        assert refused.value.message == (
            "sampleapp.echo: arguments are nested more than 200 levels deep"
        )
        assert refused.value.exit_code == 2
    # Deeper still, the client refuses before sending anything.
    with pytest.raises(rpcctl.UsageError, match="nested too deeply to be sent") as refused:
        shared_client.call("sampleapp.echo", nested(5000))
    assert refused.value.exit_code == 2
    assert shared_client.call("sampleapp.echo", nested(150)) == nested(150)
    assert not [j for j in jobs(shared_sample_app) if j["state"] == "running"]


def test_a_result_too_deep_to_send_fails_the_job(shared_sample_app: AppProcess) -> None:
    for command in (["rpc"], ["rpc", "--detach"]):
        result = shared_sample_app.rpcctl(*command, "sampleapp.deep(5000)")
        if "--detach" in command:
            result = shared_sample_app.rpcctl("wait", result.stdout.strip())
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines()[-1] == (
            "rpcctl: error: sampleapp.deep raised ValueError: sampleapp.deep returned data "
            "nested more than 200 levels deep: it cannot be sent"
        )
    assert not [j for j in jobs(shared_sample_app) if j["state"] == "running"]


class _BrokenLocks:
    def acquire(self, name: str, holder: Any, wait: float) -> Any:
        msg = "the lock database is down"
        raise RuntimeError(msg)


def test_a_failure_to_start_ends_the_job_as_failed(
    echo_task: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app_agent._jobs import table as _jobs

    locked = dataclasses.replace(echo_task, lock="x")
    table = _jobs.JobTable(_BrokenLocks())  # type: ignore[arg-type]
    job = table.create(locked, "test")
    with pytest.raises(RuntimeError):
        table.start(job, (), {})
    assert (job.state, job.error and job.error["message"]) == (
        "failed",
        "the lock database is down",
    )
    assert table.running() == []

    def no_thread(*args: Any, **kwargs: Any) -> None:
        msg = "can't start new thread"
        raise RuntimeError(msg)

    table = _jobs.JobTable(_BrokenLocks())  # type: ignore[arg-type]
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    job = table.create(echo_task, "test")
    with pytest.raises(RuntimeError):
        table.start(job, (), {})
    assert job.state == "failed"
    assert job.wait(0)
    assert table.running() == []
    assert job.cancel() is False


def test_the_service_answers_a_failure_to_start_and_lists_no_running_job(
    echo_task: Any,
) -> None:
    import structlog

    from app_agent import _service, _state
    from app_agent._caller import Caller
    from app_agent._registry import Registry

    registry = Registry()
    registry._by_name["locked_echo"] = dataclasses.replace(echo_task, lock="x", name="locked_echo")
    locks: Any = _BrokenLocks()
    state = _state.AgentState(registry, "node", "app", structlog.get_logger(), locks)
    service = _service.AgentService(Caller(state))
    reply = json.loads(service.exposed_call("locked_echo"))
    assert reply["error"]["kind"] == "task_failed"
    assert reply["error"]["message"] == (
        "locked_echo could not start: RuntimeError: the lock database is down"
    )
    assert [j["state"] for j in json.loads(service.exposed_jobs())["result"]] == ["failed"]


# -- 11: worker threads go away -------------------------------------------------------------


def test_worker_threads_exit_after_a_burst(sample_app: AppProcess, short_tmp: Path) -> None:
    import rpcctl

    pid = sample_app.proc.pid
    gate = short_tmp / "gate"
    with rpcctl.connect(sample_app.node) as app:
        idle = proc_status(pid, "Threads")
        started = [app.start("sampleapp.chatty", [1], {"gate": str(gate)}) for _ in range(50)]
        # All fifty wait for the gate at once: fifty worker threads.
        assert proc_status(pid, "Threads") >= idle + 50
        gate.touch()
        for job_id in started:
            assert app.follow(job_id) == 1
        wait_until(
            lambda: proc_status(pid, "Threads") <= idle,
            timeout=30,
            what="the worker threads to exit",
        )


def test_an_idle_worker_exits_and_a_new_job_still_runs() -> None:
    from app_agent._jobs.table import Workers

    workers = Workers(idle=0.01)
    done = threading.Event()
    workers.submit(done.set)
    assert done.wait(DEADLINE)
    wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("rpcctl-w")])
    again = threading.Event()
    workers.submit(again.set)
    assert again.wait(DEADLINE)


# -- the job's own locking ------------------------------------------------------------------


class _RecordingFlag:
    """Records whether the job's lock was held when the cancel flag was set."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.locked: list[bool] = []
        self._set = False

    def set(self) -> None:
        self.locked.append(self.job._lock._is_owned())
        self._set = True

    def is_set(self) -> bool:
        return self._set


def test_cancel_decides_and_records_under_the_jobs_lock(echo_task: Any) -> None:
    """A cancel racing the job's end either lands before it (and counts) or finds it done."""
    from app_agent._jobs import table as _jobs

    job = _jobs.Job("x", echo_task, "test")
    job.cancel_requested = _RecordingFlag(job)  # type: ignore[assignment]
    assert job.cancel() is True
    assert job.cancel_requested.locked == [True]  # type: ignore[attr-defined]
    job.finish(_jobs.CANCELLED)
    assert job.cancel() is False


def test_the_cancel_hook_is_installed_under_the_lock(echo_task: Any) -> None:
    """An async task's hook, installed after a cancel request, learns of it at once; one
    installed before is called by cancel."""
    from app_agent._jobs import table as _jobs

    job = _jobs.Job("x", echo_task, "test")
    owned: list[bool] = []
    job.cancel()
    assert job.set_cancel_hook(lambda: owned.append(True)) is True  # cancel at once

    job = _jobs.Job("y", echo_task, "test")
    assert job.set_cancel_hook(lambda: owned.append(job._lock._is_owned())) is False
    job.cancel()
    assert owned == [False]  # called once, outside the lock (it may call into an event loop)


def test_a_timed_out_job_leaves_the_running_set_at_once(
    sample_app: AppProcess, short_tmp: Path
) -> None:
    gate = short_tmp / "gate"
    result = sample_app.rpcctl("rpc", f'sampleapp.stubborn("{gate}")')
    assert result.returncode == 4
    assert "sampleapp.stubborn exceeded its timeout of 0.3s" in result.stderr
    # Its thread still waits for the gate, but the job is over: info no longer lists it.
    info = json.loads(sample_app.rpcctl("info", "--json").stdout)["result"]
    assert info["jobs"] == []
    assert [j["state"] for j in jobs(sample_app)] == ["timed_out"]
    gate.touch()
