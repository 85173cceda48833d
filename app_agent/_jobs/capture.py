"""What a running task writes, routed to its job: stdout, stderr, logging, progress.

``sys.stdout`` and ``sys.stderr`` are replaced, while an agent runs, by proxies that look at
a context variable: inside a job (the task's thread, and the coroutines an async task runs)
writes go to the job, line by line; everywhere else they go to the original streams, so
the host app's own output from its other threads is never captured. A logging handler on
the root logger does the same for stdlib logging records emitted inside a job.

While that handler, or structlog through :data:`current_stderr`, writes a record,
:func:`writing_log` is true on its thread: they hold locks the app's other threads share
(the handler's, structlog's per-file one), so a job's flow control must not make them wait.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any, Protocol, TextIO


class RunningJob(Protocol):
    """What capture needs of the job a thread runs (app_agent._jobs.job.Job is one): named here so
    the job imports capture and not the other way round."""

    @property
    def cancel_requested(self) -> Any: ...

    def write(self, stream: str, text: str) -> None: ...

    def progress(self, done: float, total: float | None, message: str | None) -> None: ...


current_job: contextvars.ContextVar[RunningJob | None] = contextvars.ContextVar(
    "rpcctl_current_job", default=None
)


_log_write = threading.local()


def writing_log() -> bool:
    """Whether this thread is writing a log record through the agent's capture: the logging
    handler below, or structlog set up by ``app_agent.configure_logging`` (which writes
    through :data:`current_stderr`)."""
    return getattr(_log_write, "active", False)


@contextlib.contextmanager
def _as_log_record() -> Iterator[None]:
    was = writing_log()
    _log_write.active = True
    try:
        yield
    finally:
        _log_write.active = was


class _JobStream(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr."""

    def __init__(self, original: TextIO, name: str) -> None:
        self.original = original
        self.name_ = name

    def write(self, text: str) -> int:
        job = current_job.get()
        if job is None:
            return self.original.write(text)
        job.write(self.name_, text)
        return len(text)

    def flush(self) -> None:
        if current_job.get() is None:
            self.original.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return current_job.get() is None and self.original.isatty()

    def fileno(self) -> int:
        return self.original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


class _JobLogHandler(logging.Handler):
    """Copies log records emitted inside a job to the job's stderr."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        job = current_job.get()
        if job is not None:
            line = self.format(record) + "\n"
            with _as_log_record():  # under this handler's lock (logging.Handler.handle)
                job.write("stderr", line)


_lock = threading.Lock()
_installed = 0
_handler = _JobLogHandler()


def install() -> None:
    """Route job output (counted: one install per running agent)."""
    global _installed
    with _lock:
        _installed += 1
        if _installed > 1:
            return
        if not isinstance(sys.stdout, _JobStream):
            sys.stdout = _JobStream(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _JobStream):
            sys.stderr = _JobStream(sys.stderr, "stderr")
        logging.getLogger().addHandler(_handler)


def reinstall() -> None:
    """Put the proxies back in front of sys.stdout and sys.stderr if the app replaced them
    since :func:`install` (they pass everything but a job's output through unchanged)."""
    with _lock:
        if not _installed:
            return
        if not isinstance(sys.stdout, _JobStream):
            sys.stdout = _JobStream(sys.stdout, "stdout")
        if not isinstance(sys.stderr, _JobStream):
            sys.stderr = _JobStream(sys.stderr, "stderr")


def uninstall() -> None:
    """Undo :func:`install` when the last agent stops, if nobody replaced the streams since."""
    global _installed
    with _lock:
        _installed = max(_installed - 1, 0)
        if _installed:
            return
        if isinstance(sys.stdout, _JobStream):
            sys.stdout = sys.stdout.original
        if isinstance(sys.stderr, _JobStream):
            sys.stderr = sys.stderr.original
        logging.getLogger().removeHandler(_handler)


class _CurrentStderr:
    """A file that is whatever sys.stderr is at each write (so job capture applies): the
    agent's structlog set-up writes its records here, under structlog's lock for this file."""

    def write(self, text: str) -> int:
        with _as_log_record():
            return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


current_stderr = _CurrentStderr()


def progress(done: float, total: float | None = None, message: str | None = None) -> None:
    """Report a running task's progress to its callers; a no-op outside a job."""
    job = current_job.get()
    if job is not None:
        job.progress(done, total, message)


def cancelled() -> bool:
    """Whether the running task has been asked to stop (``rpcctl cancel``, its timeout).

    A sync task checks this between steps and returns or raises early; an async task is
    cancelled at its next ``await`` (``asyncio.CancelledError``). False outside a job.
    """
    job = current_job.get()
    return job is not None and job.cancel_requested.is_set()
