"""Jobs: every call of a task, its output, progress, outcome, cancellation and history.

A job runs on a worker thread, or inline on the thread of a caller that waits for it
anyway. It keeps its output as events (stdout and stderr lines, progress) in a bounded
buffer, so a client can follow it live, replay it later, or leave and come back: a job
never depends on the connection that started it.
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

from app_agent import _capture, wire
from app_agent._locks import Backend, Busy, Holder, Lease
from app_agent._registry import Task

MAX_EVENTS = 10_000
"""Events a job keeps; older ones are dropped (and counted) first."""
MAX_OUTPUT_BYTES = 1 << 20
"""Bytes of output a job keeps."""
MAX_LINE = 16_384
"""A line longer than this is cut, so one write without newlines cannot grow without end."""
HISTORY = 200
"""Finished jobs kept for `rpcctl jobs`, `logs` and `wait`; the oldest are forgotten first."""

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
TIMED_OUT = "timed_out"


class _Flag:
    """A set-once boolean (what a threading.Event offers, without its Condition: a job
    never waits on it)."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class Job:
    """One call of one task."""

    def __init__(self, job_id: str, task: Task, caller: str) -> None:
        self.id = job_id
        self.task = task
        self.caller = caller
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.state = RUNNING
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.cancel_requested = _Flag()
        self.timed_out = False
        self._cond = threading.Condition()
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._first_seq = 0  # sequence number of the oldest kept event
        self._next_seq = 0
        self._bytes = 0
        self._partial: dict[str, str] = {"stdout": "", "stderr": ""}
        self._cancel_hook: Callable[[], None] | None = None
        self.audit: dict[str, Any] = {}
        self.timer: threading.Timer | None = None  # the task's own timeout, if it has one
        self.on_finish: Callable[[], None] | None = None

    # -- output ------------------------------------------------------------------------------

    def write(self, stream: str, text: str) -> None:
        with self._cond:
            pending = self._partial[stream] + text
            *lines, rest = pending.split("\n")
            while len(rest) > MAX_LINE:
                lines.append(rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            self._partial[stream] = rest
            for line in lines:
                self._append({"type": stream, "line": line})

    def progress(self, done: float, total: float | None, message: str | None) -> None:
        with self._cond:
            self._append({"type": "progress", "done": done, "total": total, "message": message})

    def _append(self, event: dict[str, Any]) -> None:
        """Add one event (the condition is held)."""
        event["seq"] = self._next_seq
        event["t"] = round(time.time(), 3)
        self._next_seq += 1
        self._events.append(event)
        self._bytes += len(event.get("line") or "") + 32
        while len(self._events) > MAX_EVENTS or self._bytes > MAX_OUTPUT_BYTES:
            dropped = self._events.popleft()
            self._bytes -= len(dropped.get("line") or "") + 32
            self._first_seq = dropped["seq"] + 1
        self._cond.notify_all()

    def _flush_partial(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._append({"type": stream, "line": rest})
                self._partial[stream] = ""

    # -- outcome -----------------------------------------------------------------------------

    def finish(self, state: str, result: Any = None, error: dict[str, Any] | None = None) -> None:
        with self._cond:
            self._flush_partial()
            if self.state == RUNNING:
                self.state = state
                self.result = result
                self.error = error
                self.finished_at = time.time()
            # else: it timed out already; that stays its outcome.
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self.state != RUNNING

    def wait(self, timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.done, timeout)

    def cancel(self) -> bool:
        """Ask the task to stop; False when it had already finished."""
        if self.done:
            return False
        self.cancel_requested.set()
        hook = self._cancel_hook
        if hook is not None:
            hook()
        with self._cond:
            self._append({"type": "cancel", "line": "cancellation requested"})
        return True

    def expire(self) -> None:
        """The task's own timeout passed: mark it, and ask it to stop."""
        with self._cond:
            if self.done:
                return
            self.timed_out = True
            self.error = {
                "kind": str(wire.ErrorKind.TIMEOUT),
                "message": f"{self.task.name} exceeded its timeout of {self.task.timeout:g}s; "
                "cancellation was requested",
            }
            self.state = TIMED_OUT
            self.finished_at = time.time()
            self._cond.notify_all()
        self.cancel_requested.set()
        if self._cancel_hook is not None:
            self._cancel_hook()

    # -- reading -----------------------------------------------------------------------------

    def events_since(self, cursor: int, wait: float) -> dict[str, Any]:
        """Events from *cursor* on, waiting up to *wait* seconds for something new."""
        with self._cond:
            if cursor >= self._next_seq and not self.done and wait > 0:
                self._cond.wait_for(lambda: self._next_seq > cursor or self.done, wait)
            start = max(cursor, self._first_seq)
            events = [e for e in self._events if e["seq"] >= start]
            return {
                "job": self.id,
                "events": events,
                "dropped": max(self._first_seq - cursor, 0),
                "cursor": self._next_seq,
                **self.summary(),
            }

    def summary(self) -> dict[str, Any]:
        end = self.finished_at or time.time()
        summary: dict[str, Any] = {
            "id": self.id,
            "task": self.task.name,
            "caller": self.caller,
            "state": self.state,
            "started_at": self.started_at,
            "duration_s": round(end - self.started_at, 3),
        }
        if self.state == SUCCEEDED:
            summary["result"] = self.result
        if self.error is not None:
            summary["error"] = self.error
        return summary


class Workers:
    """Daemon worker threads, reused: a job takes an idle one or starts a new one.

    Unbounded on purpose: a hung task holds its thread, and must not leave later jobs
    waiting for a free slot. Daemon threads, so a hung task never blocks the app's exit
    (``concurrent.futures`` joins its workers at exit). Idle workers block on a queue: no
    polling, no CPU.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = itertools.count(1)

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._queue.put(work)
        if spawn:
            name = f"rpcctl-worker-{next(self._count)}"
            threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            work = self._queue.get()
            work()
            with self._lock:
                self._idle += 1


class JobTable:
    """Runs jobs and keeps the running ones and a bounded history of finished ones."""

    def __init__(self, locks: Backend, loop: Any = None) -> None:
        self._lock = threading.Lock()
        self.loop = loop  # the app's running event loop, when the agent started inside one
        self._running: dict[str, Job] = {}
        self._finished: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._workers = Workers()
        self.locks = locks

    def create(self, task: Task, caller: str) -> Job:
        job = Job(os.urandom(4).hex(), task, caller)
        with self._lock:
            self._running[job.id] = job
        return job

    def _retire(self, job: Job) -> None:
        """Move a finished job to the history, forgetting the oldest beyond HISTORY."""
        if job.timer is not None:
            job.timer.cancel()  # its thread would otherwise wait out the whole timeout
        with self._lock:
            if self._running.pop(job.id, None) is not None:
                self._finished[job.id] = job
                while len(self._finished) > HISTORY:
                    self._finished.popitem(last=False)

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
        switch to every call)."""
        lease = self._acquire(job, lock_wait)  # Busy goes to the caller, before any thread
        if job.task.timeout is not None:
            job.timer = threading.Timer(job.task.timeout, job.expire)
            job.timer.daemon = True
            job.timer.start()
        if inline:
            self._run(job, args, kwargs, lease)
        else:
            self._workers.submit(lambda: self._run(job, args, kwargs, lease))

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
                error={"kind": str(wire.ErrorKind.BUSY), "message": str(busy)},
            )
            self._retire(job)
            raise

    def _run(
        self, job: Job, args: tuple[Any, ...], kwargs: dict[str, Any], lease: Lease | None
    ) -> None:
        token = _capture.current_job.set(job)
        try:
            if job.task.is_async:
                result = _run_async(job, args, kwargs, self.loop)
            else:
                result = job.task.func(*args, **kwargs)
        # A task may raise anything, SystemExit included: it must never end the host app.
        except BaseException as exc:  # noqa: BLE001
            cancelled = job.cancel_requested.is_set() and not job.timed_out
            job.finish(CANCELLED if cancelled else FAILED, error=_error(exc, cancelled))
        else:
            job.finish(
                CANCELLED if job.cancel_requested.is_set() else SUCCEEDED, result=_plain(result)
            )
        finally:
            _capture.current_job.reset(token)
            if lease is not None:
                lease.release()
            self._retire(job)
            if job.on_finish is not None:
                job.on_finish()


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

        job._cancel_hook = cancel_coroutine
        if job.cancel_requested.is_set():
            current.cancel()
        try:
            return await job.task.func(*args, **kwargs)
        finally:
            _capture.current_job.reset(token)

    if app_loop is not None and app_loop.is_running() and not app_loop.is_closed():
        return asyncio.run_coroutine_threadsafe(main(), app_loop).result()
    return asyncio.run(main())


def _plain(result: Any) -> Any:
    """The result as JSON data, by the documented rule; a structure that cannot be converted
    (one that contains itself) becomes its repr."""
    try:
        return wire.to_plain(result)
    except (RecursionError, ValueError):
        return repr(result)


def _error(exc: BaseException, cancelled: bool) -> dict[str, Any]:
    # Drop the worker's own frame: the caller wants the task's traceback, not ours.
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    kind = "CancelledError" if cancelled else type(exc).__qualname__
    return {
        "kind": str(wire.ErrorKind.TASK_FAILED),
        "type": kind,
        "message": str(exc) or ("cancelled" if cancelled else ""),
        "traceback": "".join(traceback.format_exception(type(exc), exc, tb)),
    }
