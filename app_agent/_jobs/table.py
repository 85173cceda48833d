"""Running jobs: worker threads, the table of running jobs and the bounded history.

A job (:mod:`app_agent._jobs.job`) runs on a worker thread, or inline on the thread of a caller
that waits for it anyway; when it ends it joins a history bounded in count and in bytes.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from app_agent import wire
from app_agent._jobs import capture as _capture
from app_agent._jobs import history as _history
from app_agent._jobs.job import Job
from app_agent._jobs.locks import Backend, Busy, Holder, Lease
from app_agent._jobs.results import measure, plain
from app_agent._registry import Task
from app_agent._server import threads as _threads
from app_agent.wire.protocol import (
    CANCELLED,
    FAILED,
    MAX_NESTING,
    RUNNING,
    SUCCEEDED,
    SUMMARY_ONLY,
    TIMED_OUT,
)

__all__ = [
    "CANCELLED",
    "FAILED",
    "MAX_NESTING",
    "RUNNING",
    "SUCCEEDED",
    "SUMMARY_ONLY",
    "TIMED_OUT",
    "Job",
    "JobTable",
    "Workers",
    "measure",
]

HISTORY = 200
"""Finished jobs kept for `rpcctl jobs`, `logs` and `wait`; the oldest are forgotten first."""
HISTORY_BYTES = 16 << 20
"""Memory (estimated) the finished jobs' kept output and results may use together; past it,
the oldest jobs' output and results are dropped (their summaries stay)."""
WORKER_IDLE = 5.0
"""Seconds an idle worker thread waits for a new job before it exits."""


class Workers:
    """Daemon worker threads, reused: a job takes an idle one or starts a new one, and a
    worker idle for WORKER_IDLE seconds exits, so a burst of jobs leaves no threads behind.

    Unbounded on purpose: a hung task holds its thread, and must not leave later jobs
    waiting for a free slot. Daemon threads, so a hung task never blocks the app's exit
    (``concurrent.futures`` joins its workers at exit). Idle workers block on a queue: no
    polling, no CPU.
    """

    def __init__(self, idle: float | None = None) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for work, minus the work queued for them
        self._count = itertools.count(1)
        self._idle_seconds = idle

    def submit(self, work: Callable[[], None]) -> None:
        """Run *work* on a worker; NoThread when no thread can be started."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._queue.put(work)
                return
        name = f"rpcctl-worker-{next(self._count)}"
        _threads.start(threading.Thread(target=self._loop, args=(work,), name=name, daemon=True))

    def _loop(self, work: Callable[[], None] | None) -> None:
        while work is not None:
            work()
            work = None  # not kept alive while idle
            with self._lock:
                self._idle += 1
            work = self._next()

    def _next(self) -> Callable[[], None] | None:
        """The next piece of work, or None when this worker should exit (idle too long)."""
        idle = WORKER_IDLE if self._idle_seconds is None else self._idle_seconds
        while True:
            try:
                return self._queue.get(timeout=idle)
            except queue.Empty:
                with self._lock:
                    # Work put after the timeout and before the lock was meant for a
                    # waiting worker (maybe this one): stay and take it.
                    if self._queue.qsize() == 0:
                        self._idle -= 1
                        return None


class JobTable:
    """Runs jobs and keeps the running ones and a bounded history of finished ones."""

    def __init__(self, locks: Backend, loop: Any = None) -> None:
        self._lock = threading.Lock()
        self.loop = loop  # the app's running event loop, when the agent started inside one
        self._running: dict[str, Job] = {}
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._history_bytes = 0  # what the finished jobs were counted at (Job.counted)
        self._held: set[Job] = set()  # finished jobs holding a big result for followers
        self._workers = Workers()
        self.locks = locks
        self.history: _history.Store = _history.NoHistory()
        """Where finished jobs are kept durably (the agent sets its store)."""

    def create(self, task: Task, caller: str) -> Job:
        job = Job(os.urandom(4).hex(), task, caller)
        with self._lock:
            self._running[job.id] = job
        return job

    def fail(self, job: Job, exc: BaseException) -> None:
        """End *job* as failed by *exc*, raised by the agent's own work around the task (a
        job never stays running because something after its creation went wrong)."""
        job.finish(FAILED, error=_error(exc, cancelled=False))
        self._retire(job)

    def _retire(self, job: Job) -> None:
        """Move an ended job to the history, keeping the history within HISTORY jobs and
        HISTORY_BYTES; idempotent (a timed-out job is retired at its deadline, and again
        when its thread returns): the job is recorded in the durable history once, by the
        call that moves it.

        Each job is counted at what it keeps when it joins the history (a timed-out task
        that goes on writing adds at most its own buffer's bound to that).
        """
        if job.timer is not None:
            job.timer.cancel()  # its thread would otherwise wait out the whole timeout
        with self._lock:
            if self._running.pop(job.id, None) is None:
                return
            job.seal()
            if job.result_held:
                self._held.add(job)
            job.counted = job.kept_bytes()
            self._history_bytes += job.counted
            self._finished[job.id] = job
            while len(self._finished) > HISTORY:
                _, old = self._finished.popitem(last=False)
                self._history_bytes -= old.counted
                self._held.discard(old)
            for held in list(self._held):
                held.release_stale()
                if not held.result_held:
                    self._held.discard(held)
            for oldest in self._finished.values():
                if self._history_bytes <= HISTORY_BYTES:
                    break
                oldest.forget_payload(
                    "the result was dropped from the history: the agent keeps at most "
                    f"{HISTORY_BYTES:,} bytes of finished jobs' output and results"
                )
                kept = oldest.kept_bytes()
                self._history_bytes -= oldest.counted - kept
                oldest.counted = kept
        self.history.record_job(job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._running.get(job_id) or self._finished.get(job_id)

    def all(self) -> list[Job]:
        """Every known job, oldest first."""
        with self._lock:
            jobs = [*self._finished.values(), *self._running.values()]
        return sorted(jobs, key=lambda j: j.started_at)

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def overrunning(self) -> list[Job]:
        """Jobs past their timeout whose task has not returned yet (it ignored the
        cancellation): they left the running set at their deadline, their thread did not."""
        with self._lock:
            return [j for j in self._finished.values() if j.timed_out and j.thread is not None]

    def start(
        self,
        job: Job,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        lock_wait: float = 0.0,
        inline: bool = False,
    ) -> None:
        """Run *job*: on a worker, or *inline* on this thread (for a caller that waits
        anyway: its connection's thread is its own, so a hand-off would only add a context
        switch to every call).

        Busy (the task's lock is held) and any failure to start (no thread) end the job as
        failed before they reach the caller.
        """
        try:
            lease = self._acquire(job, lock_wait)
        except Busy:
            raise
        except BaseException as exc:
            self.fail(job, exc)
            raise
        try:
            if job.task.timeout is not None:
                job.timer = threading.Timer(job.task.timeout, self._expire, (job,))
                job.timer.daemon = True
                _threads.start(job.timer)
            if not inline:
                self._workers.submit(lambda: self._run(job, args, kwargs, lease))
        except BaseException as exc:
            if lease is not None:
                lease.release()
            self.fail(job, exc)
            raise
        if inline:
            self._run(job, args, kwargs, lease)

    def _expire(self, job: Job) -> None:
        """A task's timeout passed: it is timed out (and no longer running) at once, even
        though its thread may go on until the task notices the cancellation."""
        if job.expire():
            self._retire(job)

    def _acquire(self, job: Job, wait: float) -> Lease | None:
        name = job.task.lock
        if name is None:
            return None
        holder = Holder(job.id, job.task.name, job.caller, time.time())
        try:
            return self.locks.acquire(name, holder, wait)
        except Busy as busy:
            job.finish(
                FAILED,
                error={
                    "kind": str(wire.ErrorKind.BUSY),
                    "reason": str(wire.Reason.LOCK_HELD),
                    "message": str(busy),
                },
            )
            self._retire(job)
            raise

    def _run(
        self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any], lease: Lease | None
    ) -> None:
        if job.traceparent is None:
            self._run_job(job, args, kwargs, lease)
            return
        from app_agent._jobs import tracing as _tracing  # only for a call that carries a trace

        with _tracing.job_span(job):
            self._run_job(job, args, kwargs, lease)

    def _run_job(
        self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any], lease: Lease | None
    ) -> None:
        token = _capture.current_job.set(job)
        job.thread = threading.get_ident()
        try:
            if job.task.is_async:
                result = _run_async(job, args, kwargs, self.loop)
            else:
                result = job.task.func(*args, **kwargs)
            kept, size = plain(job.task.name, result)
        # A task may raise anything, SystemExit included: it must never end the host app.
        except BaseException as exc:  # noqa: BLE001
            cancelled = job.cancel_requested.is_set() and not job.timed_out
            job.finish(CANCELLED if cancelled else FAILED, error=_error(exc, cancelled))
        else:
            state = CANCELLED if job.cancel_requested.is_set() else SUCCEEDED
            job.finish(state, result=kept, result_bytes=size)
        finally:
            job.thread = None
            _capture.current_job.reset(token)
            try:
                if lease is not None:
                    lease.release()
            finally:
                if job.state == RUNNING:  # recording the outcome failed: never leave it so
                    job.finish(FAILED, error=_INTERNAL_ERROR)
                self._retire(job)
                if job.on_finish is not None:
                    job.on_finish()


_INTERNAL_ERROR = {
    "kind": str(wire.ErrorKind.TASK_FAILED),
    "reason": str(wire.Reason.RAISED),
    "type": "InternalError",
    "message": "the agent failed to record the job's outcome (see the app's log)",
}


def _run_async(job: Job, args: tuple[Any, ...], kwargs: dict[str, Any], app_loop: Any) -> Any:
    """Run an async task: on the app's own event loop when the agent started inside one (so
    the task can use the app's async resources), else on a fresh loop of this thread."""
    import asyncio

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None
        token = _capture.current_job.set(job)  # this task's own context, on either loop

        def cancel_coroutine() -> None:
            loop.call_soon_threadsafe(current.cancel)

        if job.set_cancel_hook(cancel_coroutine):
            current.cancel()
        try:
            return await job.task.func(*args, **kwargs)
        finally:
            _capture.current_job.reset(token)

    if app_loop is not None and app_loop.is_running() and not app_loop.is_closed():
        return asyncio.run_coroutine_threadsafe(main(), app_loop).result()
    return asyncio.run(main())


def _error(exc: BaseException, cancelled: bool) -> dict[str, Any]:
    # Drop the worker's own frame: the caller wants the task's traceback, not ours.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    kind = "CancelledError" if cancelled else type(exc).__qualname__
    try:
        message = str(exc)
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception as inner:  # noqa: BLE001  (an exception whose str() raises, or too deep)
        message = f"<str() of the exception failed: {type(inner).__name__}>"
        text = ""
    return {
        "kind": str(wire.ErrorKind.TASK_FAILED),
        "reason": str(wire.Reason.CANCELLED if cancelled else wire.Reason.RAISED),
        "type": kind,
        "message": message or ("cancelled" if cancelled else ""),
        "traceback": text,
    }
