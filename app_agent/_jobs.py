"""Running a task call on its own worker thread, and the table of calls in flight."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import queue
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from app_agent._registry import Task


@dataclasses.dataclass
class Job:
    """One call of one task."""

    id: str
    task: str
    caller: str
    started_at: float
    future: concurrent.futures.Future[Any] = dataclasses.field(repr=False)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task,
            "caller": self.caller,
            "started_at": self.started_at,
            "running_s": round(time.time() - self.started_at, 3),
        }


class TaskFailure(Exception):
    """Carries a task's exception, already formatted, out of its worker thread."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.type = type(exc).__qualname__
        self.message = str(exc)
        # Drop the worker's own frame: the caller wants the task's traceback, not ours.
        tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
        self.traceback = "".join(traceback.format_exception(type(exc), exc, tb))


class Workers:
    """Daemon worker threads, reused: a call takes an idle one or starts a new one.

    Unbounded on purpose: a hung task holds its thread, and must not leave later calls
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
            if self._idle:
                self._idle -= 1
                spawn = False
            else:
                spawn = True
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
    """Starts jobs on worker threads and tracks the ones still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._workers = Workers()

    def start(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        caller: str,
        inline: bool = False,
    ) -> Job:
        """Run one call as a job: on a worker thread, or *inline* on the calling thread.

        A caller that waits for the result anyway runs it inline: its connection's thread is
        already a thread of its own, so pings and other callers are served meanwhile, and a
        hand-off to another thread would only add a context switch to every call.
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        job = Job(
            id=f"j{next(self._ids)}",
            task=task.name,
            caller=caller,
            started_at=time.time(),
            future=future,
        )
        with self._lock:
            self._running[job.id] = job
        if inline:
            self._run(job, task, args, kwargs)
        else:
            self._workers.submit(lambda: self._run(job, task, args, kwargs))
        return job

    def _run(self, job: Job, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            if task.is_async:
                import asyncio

                result = asyncio.run(task.func(*args, **kwargs))
            else:
                result = task.func(*args, **kwargs)
        # A task may raise anything, SystemExit included: it must never end the host app.
        except BaseException as exc:  # noqa: BLE001
            job.future.set_exception(TaskFailure(exc))
        else:
            job.future.set_result(result)
        finally:
            with self._lock:
                self._running.pop(job.id, None)

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())
