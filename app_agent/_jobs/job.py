"""One job: one call of a task, its output as events, its followers, its outcome.

A job keeps its output as events (stdout and stderr lines, progress) in a bounded buffer,
so a client can follow it live, replay it later, or leave and come back: a job never
depends on the connection that started it.

Flow control: while the job's own caller (the connection that started it and follows it)
keeps up, the task's own thread waits for it when the buffer is full instead of dropping
lines; when the caller does not follow, or has not asked for FOLLOWER_GRACE seconds, the
oldest events are dropped and every reader is told how many it missed. Other followers
(``rpcctl logs -f``, whoever may read the job) never hold the task back: they skip ahead.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from app_agent import wire
from app_agent._jobs.capture import writing_log
from app_agent._jobs.results import MAX_RESULT_BYTES, bounded_error
from app_agent._registry import Task
from app_agent.wire.protocol import (
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
)

MAX_EVENTS = 10_000
"""Events a job keeps; older ones are dropped (and counted) first."""
MAX_OUTPUT_BYTES = 1 << 20
"""Characters of output text a job keeps."""
MAX_LINE = 16_384
"""A line longer than this is cut, so one write without newlines cannot grow without end."""
FOLLOWER_GRACE = 10.0
"""Seconds a follower may go without asking for events before a task with a full buffer
stops waiting for it (and drops its oldest events instead)."""
EVENT_OVERHEAD = 256
"""Estimated bytes a kept event costs besides its text (the dict, its seq and time)."""


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


class _Follower:
    """A connection reading a job's events: where it is, and when it last asked."""

    __slots__ = ("cursor", "seen")

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor
        self.seen = time.monotonic()

    def live(self, now: float) -> bool:
        return now - self.seen <= FOLLOWER_GRACE


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
        self.result_bytes = 0
        self.result_dropped: str | None = None  # why the result is no longer kept
        self.error: dict[str, Any] | None = None
        self.cancel_requested = _Flag()
        self.timed_out = False
        self.thread: int | None = None  # the thread running the task: the only one that waits
        # One lock, entered directly (a C-level RLock: the Condition's own __enter__ costs a
        # Python call on every call's path); the condition on it wakes readers and writers.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._first_seq = 0  # sequence number of the oldest kept event
        self._next_seq = 0
        self._bytes = 0
        self._partial: dict[str, str] = {"stdout": "", "stderr": ""}
        self._cancel_hook: Callable[[], None] | None = None
        self._followers: dict[int, _Follower] = {}
        self._caller_key: int | None = None  # the follower the task may wait for: its caller
        self._result_held = False  # a result over MAX_RESULT_BYTES, kept for its followers
        self.counted = 0  # bytes the history counts for this job
        self.audit: dict[str, Any] = {}
        self.traceparent: str | None = None  # the caller's trace: the job runs in a span of it
        # The call's named arguments, for the durable history: only of a task that opted in
        # (``@task(record_args=True)``).
        self.arguments: dict[str, Any] | None = None
        self.timer: threading.Timer | None = None  # the task's own timeout, if it has one
        self.on_finish: Callable[[], None] | None = None

    # -- output ------------------------------------------------------------------------------

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            pending = self._partial[stream] + text
            if "\n" not in text and len(pending) <= MAX_LINE:
                self._partial[stream] = pending  # print() writes its text, then "\n"
                return
            *lines, rest = pending.split("\n")
            if len(rest) > MAX_LINE:
                cut = len(rest) - len(rest) % MAX_LINE
                lines += [rest[i : i + MAX_LINE] for i in range(0, cut, MAX_LINE)]
                rest = rest[cut:]
            self._partial[stream] = rest
            for line in lines:
                self._append({"type": stream, "line": line}, wait=True)

    def progress(self, done: float, total: float | None, message: str | None) -> None:
        event = {
            "type": "progress",
            "done": wire.to_plain(done),  # events are kept as JSON data (NaN as "NaN", ...)
            "total": wire.to_plain(total),
            "message": None if message is None else str(message),
        }
        with self._lock:
            self._append(event, wait=True)

    def _append(self, event: dict[str, Any], wait: bool = False) -> None:
        """Add one event (the condition is held); with *wait*, first wait for room while a
        live follower still needs the oldest event (see :meth:`_wait_for_room`)."""
        size = len(event.get("line") or "")
        if wait:
            self._wait_for_room(size)
        event["seq"] = self._next_seq
        event["t"] = round(time.time(), 3)
        self._next_seq += 1
        self._events.append(event)
        self._bytes += size
        while len(self._events) > MAX_EVENTS or self._bytes > MAX_OUTPUT_BYTES:
            dropped = self._events.popleft()
            self._bytes -= len(dropped.get("line") or "")
            self._first_seq = dropped["seq"] + 1
        self._cond.notify_all()

    def _wait_for_room(self, size: int) -> None:
        """Flow control: block the task while the buffer is full and a follower that keeps
        up has not read the oldest event yet.

        Only the job's own thread waits (never the app's event loop or a thread of the
        app's that inherited the job's context), never while the agent's log capture writes
        a record (it holds a lock the app's other threads share: _capture.writing_log),
        never after the job ended, timed out or was asked to stop, and never longer than
        FOLLOWER_GRACE past a follower's last request: a follower gone quiet is left
        behind, and the oldest events dropped.
        """
        if threading.get_ident() != self.thread:
            return
        while len(self._events) >= MAX_EVENTS or self._bytes + size > MAX_OUTPUT_BYTES:
            if self.state != RUNNING or self.cancel_requested.is_set() or writing_log():
                return
            # Only the caller is waited for: any reader may follow, and a slow one would
            # otherwise set the task's pace (issue #20: 95 times slower).
            caller = None if self._caller_key is None else self._followers.get(self._caller_key)
            now = time.monotonic()
            if caller is None or caller.cursor > self._first_seq or not caller.live(now):
                return
            self._cond.wait(max(caller.seen + FOLLOWER_GRACE - now, 0.0))

    def _flush_partial(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._append({"type": stream, "line": rest})
                self._partial[stream] = ""

    # -- outcome -----------------------------------------------------------------------------

    def finish(
        self,
        state: str,
        result: Any = None,
        error: dict[str, Any] | None = None,
        result_bytes: int = 0,
    ) -> None:
        with self._lock:
            self._flush_partial()
            if self.state == RUNNING:
                self.state = state
                self.result = result
                self.result_bytes = result_bytes
                self.error = error if error is None else bounded_error(error)
                self.finished_at = time.time()
            # else: it timed out already; that stays its outcome.
            self._cond.notify_all()

    @property
    def done(self) -> bool:
        return self.state != RUNNING

    def wait(self, timeout: float | None) -> bool:
        with self._lock:
            return self._cond.wait_for(lambda: self.done, timeout)

    def cancel(self) -> bool:
        """Ask the task to stop; False when it had already finished."""
        with self._lock:
            if self.done:
                return False
            self.cancel_requested.set()
            hook = self._cancel_hook
            self._append({"type": "cancel", "line": "cancellation requested"})
        if hook is not None:
            hook()
        return True

    def set_cancel_hook(self, hook: Callable[[], None]) -> bool:
        """Install what cancels the task (an async task's coroutine); True when cancellation
        was requested already, so the caller cancels at once instead."""
        with self._lock:
            self._cancel_hook = hook
            return self.cancel_requested.is_set()

    def expire(self) -> bool:
        """The task's own timeout passed: mark it, and ask it to stop. False when it had
        ended already."""
        with self._lock:
            if self.done:
                return False
            self.timed_out = True
            self.error = {
                "kind": str(wire.ErrorKind.TIMEOUT),
                "reason": str(wire.Reason.TASK_TIMEOUT),
                "message": f"{self.task.name} exceeded its timeout of {self.task.timeout:g}s; "
                "cancellation was requested",
            }
            self.state = TIMED_OUT
            self.finished_at = time.time()
            self.cancel_requested.set()
            hook = self._cancel_hook
            self._cond.notify_all()
        if hook is not None:
            hook()
        return True

    # -- followers ---------------------------------------------------------------------------

    def attach(self, follower: int, cursor: int = 0) -> None:
        """Register the job's caller, *follower*, before the job starts, so that none of
        the output it is going to ask for is dropped in the meantime: the one follower the
        task waits for (others, who follow with :meth:`events_since`, skip ahead)."""
        with self._lock:
            self._followers[follower] = _Follower(cursor)
            self._caller_key = follower

    def detach(self, follower: int) -> None:
        """*follower* is gone (its connection closed): nobody waits for it any more."""
        with self._lock:
            if self._followers.pop(follower, None) is not None:
                self._release_result()
                if self.state == RUNNING:
                    self._cond.notify_all()  # the task may be waiting for this follower

    def seal(self) -> None:
        """The job has ended and joins the history: a result over MAX_RESULT_BYTES is kept
        only while followers that were there at the end have not collected it."""
        if self.result_bytes <= MAX_RESULT_BYTES:
            return
        with self._lock:
            if self.result_dropped is None:
                self._result_held = True
        self.release_stale()

    def release_stale(self) -> None:
        """Forget followers gone quiet for FOLLOWER_GRACE, and the result they held."""
        with self._lock:
            now = time.monotonic()
            for key in [k for k, f in self._followers.items() if not f.live(now)]:
                del self._followers[key]
            self._release_result()

    def followed_by(self, follower: int) -> bool:
        with self._lock:
            return follower in self._followers

    @property
    def result_held(self) -> bool:
        return self._result_held

    def _release_result(self) -> None:
        if self._result_held and self.done and not self._followers:
            self._result_held = False
            self._drop_result(
                f"the result ({self.result_bytes:,} bytes as JSON) was sent to the callers "
                f"waiting when the job ended but is not kept: the agent keeps results of up "
                f"to {MAX_RESULT_BYTES:,} bytes"
            )

    def _drop_result(self, why: str) -> int:
        if self.state != SUCCEEDED or self.result_dropped is not None:
            return 0
        freed = self.result_bytes
        self.result = None
        self.result_bytes = 0
        self.result_dropped = why
        return freed

    def kept_bytes(self) -> int:
        """An estimate of the memory the job's kept output and result use."""
        held = 0 if self._result_held else self.result_bytes
        return self._bytes + len(self._events) * EVENT_OVERHEAD + held

    def forget_payload(self, why: str) -> None:
        """Drop the kept output and result of a finished job (its summary stays)."""
        with self._lock:
            if self._events:
                self._first_seq = self._next_seq
                self._events.clear()
                self._bytes = 0
            if not self._result_held:
                self._drop_result(why)

    # -- reading -----------------------------------------------------------------------------

    def events_since(self, cursor: int, wait: float, follower: int | None = None) -> dict[str, Any]:
        """Events from *cursor* on, waiting up to *wait* seconds for something new.

        A *follower* (a connection's key) is remembered with its position, so that the
        task waits for it rather than drop what it has not read, until it reads the end.
        """
        with self._lock:
            if follower is not None and (not self.done or follower in self._followers):
                self._followers[follower] = _Follower(cursor)
            if cursor >= self._next_seq and not self.done and wait > 0:
                self._cond.wait_for(lambda: self._next_seq > cursor or self.done, wait)
            start = max(cursor, self._first_seq)
            events = (
                list(itertools.islice(self._events, start - self._first_seq, None))
                if start < self._next_seq
                else []
            )
            snapshot = {
                "job": self.id,
                "events": events,
                "dropped": max(self._first_seq - cursor, 0),
                "cursor": self._next_seq,
                **self.summary(),
            }
            if follower is not None and follower in self._followers:
                if self.done:
                    del self._followers[follower]  # it has the end: it needs nothing more
                    self._release_result()
                else:
                    self._followers[follower] = _Follower(max(cursor, self._next_seq))
                self._cond.notify_all()  # a task waiting for room may go on
            return snapshot

    def summary(self, full: bool = True) -> dict[str, Any]:
        """State, times and outcome; *full* adds the result and the error's traceback (the
        job listing carries neither). Read under the job's lock: never a state without the
        outcome that goes with it (``succeeded`` with ``result: null``)."""
        with self._lock:
            return self._summary(full)

    def _summary(self, full: bool) -> dict[str, Any]:
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
            if self.result_dropped is not None:
                summary["result_dropped"] = self.result_dropped
            elif full:
                summary["result"] = self.result
        if self.error is not None:
            if full:
                summary["error"] = self.error
            else:
                summary["error"] = {
                    k: v[:500] if isinstance(v, str) else v
                    for k, v in self.error.items()
                    if k != "traceback"
                }
        return summary
