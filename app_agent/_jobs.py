"""Running a task call on its own worker thread, and the table of calls in flight."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import threading
import time
import traceback
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


class JobTable:
    """Starts jobs on daemon worker threads and tracks the ones still running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, Job] = {}
        self._ids = itertools.count(1)

    def start(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], caller: str) -> Job:
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
        worker = threading.Thread(
            target=self._run,
            args=(job, task, args, kwargs),
            name=f"rpcctl-task-{job.id}",
            daemon=True,
        )
        worker.start()
        return job

    def _run(self, job: Job, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            if task.is_async:
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
