"""Health checks: the app's own (``@health_check``) and the agent's built-in ones.

``rpcctl health`` runs them all at once, each on a daemon thread of its own, and waits for
each up to its timeout: a check that hangs fails at its timeout without holding up the
others, and is not started again while it still hangs (so a probe that fires every few
seconds cannot pile up threads). Nothing here runs until ``health`` is asked for.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from app_agent._introspection.frames import short_path
from app_agent._registry import _module_name, check_no_arguments
from app_agent._server import threads as _threads
from app_agent.wire import environment
from app_agent.wire.words import plural

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_TIMEOUT = 5.0
"""Seconds an app's check may take unless ``@health_check(timeout=...)`` says otherwise."""
DEFAULT_LOOP_LAG = 1.0
"""Seconds of event-loop lag above which the built-in ``agent.event_loop`` check fails."""


@dataclasses.dataclass(frozen=True)
class Check:
    """One health check: a function without arguments that raises (or returns False) when
    the app is unhealthy."""

    name: str
    func: Callable[[], Any]
    timeout: float = DEFAULT_TIMEOUT
    builtin: bool = False


class CheckFailed(Exception):
    """Raised by the built-in checks; its text is the check's message."""


class _Registry:
    """The app's checks by name, in registration order; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, Check] = {}

    def add(self, check: Check) -> None:
        with self._lock:
            # Registering the same name again (a module reload) replaces the old check.
            self._checks.pop(check.name, None)
            self._checks[check.name] = check

    def all(self) -> list[Check]:
        with self._lock:
            return list(self._checks.values())

    def clear(self) -> None:
        with self._lock:
            self._checks.clear()


registry = _Registry()


def reset_health_checks() -> None:
    """Forget every registered health check (for tests)."""
    registry.clear()


@overload
def health_check(func: F, /) -> F: ...


@overload
def health_check(
    *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Callable[[F], F]: ...


def health_check(
    func: F | None = None, /, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> F | Callable[[F], F]:
    """Register a function without arguments (plain or ``async def``) as a health check.

    It passes when it returns without raising and does not return ``False``; otherwise
    ``rpcctl health`` exits 8 naming it, with the exception's text as its message. A check
    that takes longer than *timeout* seconds fails. ``@health_check`` names it
    ``module.function``; ``@health_check(name="db")`` gives it a name of its own.
    """
    if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
        msg = f"health_check timeout must be a positive number of seconds, got {timeout!r}"
        raise ValueError(msg)

    def register(f: F) -> F:
        label = name or f"{_module_name(f)}.{f.__qualname__}"
        check_no_arguments(f, f"health check {label}")
        registry.add(Check(label, f, float(timeout)))
        return f

    if func is not None:
        return register(func)
    return register


# -- running checks ----------------------------------------------------------------------------


class _Run:
    """One run of one check, on its own daemon thread."""

    def __init__(self, check: Check, loop: Any) -> None:
        self.check = check
        self.loop = loop
        self.started = time.monotonic()
        self.done = threading.Event()
        self.ok = False
        self.message = ""
        self.error_type: str | None = None
        self.duration = 0.0
        self.future: Any = None  # an async check's future on the app's loop

    def start(self) -> None:
        try:
            _threads.start(threading.Thread(target=self.body, name="rpcctl-health", daemon=True))
        except _threads.NoThread as exc:  # the check fails, saying why; the others still run
            self.message = str(exc)
            self.duration = time.monotonic() - self.started
            self.done.set()

    def body(self) -> None:
        try:
            result = self.check.func()
            if inspect.isawaitable(result):
                result = self._await(result)
        # A check may raise anything, SystemExit included: that is its failure, no more.
        except BaseException as exc:  # noqa: BLE001
            self.message = _message(exc)
            if not isinstance(exc, CheckFailed):
                self.error_type = type(exc).__name__
        else:
            self.ok = result is not False
            if result is False:
                self.message = "returned False"
            elif isinstance(result, str):
                self.message = result
        self.duration = time.monotonic() - self.started
        self.done.set()

    def _await(self, awaitable: Any) -> Any:
        import asyncio

        async def wrapper() -> Any:
            return await awaitable

        loop = self.loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            # On the app's loop, where the check's async resources live.
            self.future = asyncio.run_coroutine_threadsafe(wrapper(), loop)
            return self.future.result()
        return asyncio.run(wrapper())


_lock = threading.Lock()
_in_flight: dict[str, _Run] = {}
"""The latest run of each check; one that has not finished is waited for, not repeated."""


def run_checks(checks: Iterable[Check], budget: float, loop: Any = None) -> list[dict[str, Any]]:
    """Run *checks* at once; each outcome after at most min(its timeout, *budget*) seconds."""
    started = time.monotonic()
    runs: list[tuple[_Run, bool]] = []
    for check in checks:
        with _lock:
            previous = _in_flight.get(check.name)
            if previous is not None and not previous.done.is_set():
                runs.append((previous, True))
                continue
            run = _Run(check, loop)
            _in_flight[check.name] = run
        run.start()
        runs.append((run, False))
    outcomes = []
    for run, earlier in runs:
        check = run.check
        limit = min(check.timeout, budget)
        finished = run.done.wait(max(started + limit - time.monotonic(), 0.0))
        outcome: dict[str, Any] = {"name": check.name, "builtin": check.builtin}
        if finished:
            outcome.update(ok=run.ok, message=run.message, duration_s=round(run.duration, 4))
            if run.error_type is not None:
                outcome["type"] = run.error_type
            if earlier:
                outcome["message"] = (run.message + " " if run.message else "") + (
                    "(a run that started before this one)"
                )
        else:
            if run.future is not None:
                run.future.cancel()  # an async check: cancel its task on the app's loop
            if earlier:
                message = (
                    f"has not returned since an earlier run "
                    f"{time.monotonic() - run.started:.1f}s ago (hung)"
                )
            else:
                message = f"did not finish within {limit:g}s"
            outcome.update(ok=False, message=message, duration_s=round(limit, 4))
        outcomes.append(outcome)
    return outcomes


def report(jobs: Any, budget: float) -> dict[str, Any]:
    """Run the built-in checks and every registered one; the whole report."""
    started = time.monotonic()
    loop = jobs.loop
    checks = builtin_checks(jobs, loop) + registry.all()
    outcomes = run_checks(checks, budget, loop)
    return {
        "healthy": all(o["ok"] for o in outcomes),
        "checks": outcomes,
        "duration_s": round(time.monotonic() - started, 4),
    }


# -- the built-in checks -----------------------------------------------------------------------


def builtin_checks(jobs: Any, loop: Any) -> list[Check]:
    checks = [Check("agent.jobs", lambda: jobs_within_timeout(jobs), 2.0, builtin=True)]
    if loop is not None:
        threshold = loop_lag_threshold()
        checks.insert(
            0,
            Check(
                "agent.event_loop",
                lambda: loop_lag(loop, threshold),
                threshold + 1.0,  # the check reports the lag itself, before this timeout
                builtin=True,
            ),
        )
    return checks


def loop_lag_threshold() -> float:
    text = os.environ.get(environment.HEALTH_LOOP_LAG, "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_LOOP_LAG
    return value if math.isfinite(value) and value > 0 else DEFAULT_LOOP_LAG


def loop_lag(loop: Any, threshold: float) -> str:
    """How long the app's event loop takes to run a callback scheduled from here.

    Measured only when asked: one ``call_soon_threadsafe`` and a bounded wait, never a
    periodic callback on the loop.
    """
    if loop.is_closed() or not loop.is_running():
        msg = "the app's event loop is not running"
        raise CheckFailed(msg)
    ran = threading.Event()
    ran_at: list[float] = []

    def callback() -> None:
        ran_at.append(time.monotonic())
        ran.set()

    scheduled = time.monotonic()
    loop.call_soon_threadsafe(callback)
    if not ran.wait(threshold):
        where = blocking_frame(loop)
        blocked = time.monotonic() - scheduled
        if where is None:
            msg = (
                f"the event loop is blocked: a callback scheduled {blocked:.1f} s ago has not "
                f"run (threshold {threshold:g}s; `rpcctl stack` shows what the loop's thread "
                "is doing)"
            )
        else:
            msg = (
                f"the event loop is blocked for over {blocked:.1f} s in {where} (threshold "
                f"{threshold:g}s; `rpcctl stack` shows the whole stack)"
            )
        raise CheckFailed(msg)
    lag = ran_at[0] - scheduled
    if lag > threshold:
        msg = f"event loop lag {lag:.2f}s is above the threshold of {threshold:g}s"
        raise CheckFailed(msg)
    return f"lag {lag * 1000:.1f} ms"


def blocking_frame(loop: Any) -> str | None:
    """``function (file:line)`` of the innermost frame of the app's own code that the loop's
    thread runs now (not asyncio's, the standard library's or the agent's, when there is
    one); None when the loop's thread is unknown."""
    ident = getattr(loop, "_thread_id", None)  # set by asyncio's run_forever (and uvloop's)
    frame = sys._current_frames().get(ident) if ident is not None else None
    innermost = frame
    while frame is not None and _library_code(frame.f_code.co_filename):
        frame = frame.f_back
    frame = frame if frame is not None else innermost
    if frame is None:
        return None
    code = frame.f_code
    return f"{code.co_qualname} ({short_path(code.co_filename)}:{frame.f_lineno})"


_STDLIB = os.path.dirname(os.__file__) + os.sep
_AGENT = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_code(filename: str) -> bool:
    """Whether *filename* is the standard library's or the agent's (not the app's)."""
    if filename.startswith("<"):  # frozen modules: importlib, zipimport
        return True
    if filename.startswith(_AGENT):
        return True
    return filename.startswith(_STDLIB) and "-packages" + os.sep not in filename


def jobs_within_timeout(jobs: Any) -> str:
    """Fails while a job runs on past its task's timeout (its code ignored cancellation)."""
    now = time.time()
    over = jobs.overrunning()
    if over:
        msg = "; ".join(
            f"job {job.id} ({job.task.name}) has run {now - job.started_at:.1f}s, past its "
            f"timeout of {job.task.timeout:g}s"
            for job in over
        )
        raise CheckFailed(msg)
    running = len(jobs.running())
    return f"{plural(running, 'job')} running"


def _message(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
