"""When the app is sick (issue #21): the agent keeps answering, and the client says what is
wrong. Out of threads, start() from a task module, a stopped or GIL-bound app, a blocked
event loop, out of descriptors, and the review's races."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import app_agent
from app_agent import _job
from app_agent._registry import Task
from conftest import DEADLINE

# -- 9. the review's races ---------------------------------------------------------------------


def test_a_job_summary_never_shows_a_half_recorded_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    """summary() reads state, result and error under the job's lock: while finish() is
    half-way (state set, error not yet), a reader waits instead of seeing `failed` with no
    error (or `succeeded` with `result: null`)."""
    job = _job.Job("race", Task("t.race", lambda: None), "test")
    inside, release = threading.Event(), threading.Event()
    bounded = _job._bounded_error

    def slow_bounded(error: dict[str, Any]) -> dict[str, Any]:
        inside.set()  # finish() has set the state and holds the job's lock
        release.wait(DEADLINE)
        return bounded(error)

    monkeypatch.setattr(_job, "_bounded_error", slow_bounded)
    finisher = threading.Thread(target=job.finish, args=(_job.FAILED, None, {"message": "x"}))
    finisher.start()
    assert inside.wait(DEADLINE)
    seen: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: seen.append(job.summary()))
    reader.start()
    reader.join(0.2)  # gives a reader that does not wait the time to read the half-way job
    release.set()
    finisher.join(DEADLINE)
    reader.join(DEADLINE)
    assert seen[0]["state"] == "failed"
    assert seen[0].get("error", {}).get("message") == "x", seen


class _BothLook(threading.Event):
    """A stop flag that lets two stop() calls both look before either sets it: the window
    of a check-then-set. A stop() that decides under a lock lets only one look at a time
    (the barrier then breaks, and the first goes on alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=1.0)

    def is_set(self) -> bool:
        seen = super().is_set()
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait()
        return seen


def test_concurrent_stops_one_wins_the_other_is_a_no_op(short_tmp: Path) -> None:
    with capture_logs() as logs:
        agent = app_agent.start(node=f"unix:{short_tmp}/agent.sock", app="stops")
        agent._stopped = _BothLook()
        stops = [threading.Thread(target=agent.stop) for _ in range(2)]
        for thread in stops:
            thread.start()
        for thread in stops:
            thread.join(DEADLINE)
    assert [e["event"] for e in logs].count("agent.stopped") == 1
    assert app_agent.current() is None
    assert not (short_tmp / "agent.sock").exists()
