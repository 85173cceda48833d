"""Drain and resume: take the app out of readiness for a deploy, and put it back.

``rpcctl drain`` marks the app not ready (``rpcctl ping --ready`` exits 3, so probes and load
balancers stop sending it work; plain ``ping`` still answers), runs the app's
``@on_drain`` hooks (stop consuming a queue, say) and, with ``wait_jobs``, waits for the
running jobs to end. ``rpcctl resume`` runs the ``@on_resume`` hooks and marks it ready
again. Both are idempotent, need the ``drain`` grant, and leave an audit line through
:func:`record` (the one place a drain or resume is recorded).

Decisions (docs/operations.md, "Drain and resume"):

- Drain marks not ready *before* its hooks run (traffic stops first), resume *after* its
  hooks ran (traffic comes back to an app whose consumers are running again).
- A hook that raises is logged (``drain.hook_failed``) and reported by name; the other hooks
  still run. A failed drain hook leaves the app drained (not ready is the safe side); a failed
  resume hook leaves it drained too, so ``resume`` can be tried again (it runs every resume
  hook again).
- Hooks run one after the other on the asking connection's thread; ``async def`` hooks on
  the app's event loop when the agent runs on one, else on a fresh loop.
- One transition at a time, without waiting: a drain that arrives while another drain's
  hooks run answers "already drained" at once; a resume then, or anything while a resume's
  hooks run, is busy (exit 7) naming who asked and how long ago. So a hook that hangs never
  makes the next command hang too.
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from app_agent import wire
from app_agent._jobs import history as _history
from app_agent._registry import _module_name, check_no_arguments
from app_agent._server import readiness as readiness
from app_agent.wire import ErrorKind, Reason, protocol
from app_agent.wire.protocol import MAX_DRAIN_WAIT

if TYPE_CHECKING:
    from app_agent._state import AgentState

F = TypeVar("F", bound=Callable[..., Any])

_hooks: dict[str, list[tuple[str, Callable[[], Any]]]] = {"drain": [], "resume": []}
_lock = threading.Lock()  # guards _drained and _busy; never held while hooks run
_drained: dict[str, Any] | None = None
"""``{"by": who, "since": epoch seconds}`` while drained, else None."""
_busy: tuple[str, str, float] | None = None
"""``(kind, who, monotonic start)`` while a drain's or a resume's hooks run."""


def on_drain(func: F) -> F:
    """Register a function without arguments (plain or ``async def``) that ``rpcctl drain``
    runs after it marks the app not ready: stop consuming a queue, close a listener."""
    return _register("drain", func)


def on_resume(func: F) -> F:
    """Register a function without arguments (plain or ``async def``) that ``rpcctl resume``
    runs before it marks the app ready again: start what an ``on_drain`` hook stopped."""
    return _register("resume", func)


def _register(kind: str, func: F) -> F:
    label = f"{_module_name(func)}.{func.__qualname__}"
    check_no_arguments(func, f"on_{kind} hook {label}")
    hooks = _hooks[kind]
    # Registering the same name again (a module reload) replaces the old hook.
    hooks[:] = [(name, f) for name, f in hooks if name != label]
    hooks.append((label, func))
    return func


def reset_drain() -> None:
    """Forget every hook and the drained state, and mark ready again (for tests)."""
    global _drained
    for hooks in _hooks.values():
        hooks.clear()
    _drained = None
    readiness.set_drained(False)


def drained() -> dict[str, Any] | None:
    """``{"by", "since"}`` while the app is drained, else None (``info`` shows it)."""
    return dict(_drained) if _drained is not None else None


# -- the two handlers (the service's drain and resume call them, their grant checked) ------
# Each takes what it needs of the asking connection: the agent's state, who asks (the audit
# fields: caller, auth, identity) and whether that client has hung up.


def drain(
    state: AgentState, who: Mapping[str, Any], peer_gone: Callable[[], bool], wait_jobs: Any
) -> str:
    """Mark the app not ready, run the on_drain hooks, wait up to *wait_jobs* seconds for
    the running jobs to end: ``{drained, already, hooks, failed, running, waited_s}``."""
    global _drained, _busy
    began = time.time()
    if type(wait_jobs) not in (int, float) or not 0 <= wait_jobs <= MAX_DRAIN_WAIT:
        return wire.error(
            ErrorKind.USAGE,
            f"drain() takes wait_jobs: seconds from 0 to {MAX_DRAIN_WAIT:g}",
            Reason.BAD_ARGUMENTS,
        )
    with _lock:
        if _busy is not None and _busy[0] == "resume":
            return _busy_reply()
        already = _drained is not None  # a drain whose hooks still run included
        if not already:
            _drained = {"by": _who(who), "since": time.time()}
            readiness.set_drained(True)
            _busy = ("drain", _drained["by"], time.monotonic())
        current = dict(_drained or {})
    ran = [] if already else _hooks_then_idle("drain", state)[0]
    failed = [h["name"] for h in ran if not h["ok"]]
    if not already:
        record(state, who, "drain.drained", began, hooks=len(ran), failed=failed)
    started = time.monotonic()
    running = _wait_for_jobs(state, peer_gone, float(wait_jobs)) if wait_jobs else _running(state)
    return wire.ok(
        {
            "drained": current,
            "already": already,
            "hooks": ran,
            "failed": failed,
            "running": running,
            "waited_s": round(time.monotonic() - started, 3),
        }
    )


def resume(state: AgentState, who: Mapping[str, Any]) -> str:
    """Run the on_resume hooks and, when they all passed, mark the app ready again:
    ``{resumed, was, hooks, failed}`` (*was*: the drain that ended, None when not drained)."""
    global _busy
    began = time.time()
    with _lock:
        if _busy is not None:
            return _busy_reply()
        was = dict(_drained) if _drained is not None else None
        if was is not None:
            _busy = ("resume", _who(who), time.monotonic())
    ran: list[dict[str, Any]] = []
    failed: list[str] = []
    if was is not None:
        ran, failed = _hooks_then_idle("resume", state)
    if was is not None:
        event = "drain.resume_failed" if failed else "drain.resumed"
        record(state, who, event, began, hooks=len(ran), failed=failed, drained_by=was["by"])
    return wire.ok(
        {"resumed": was is not None and not failed, "was": was, "hooks": ran, "failed": failed}
    )


def record(
    state: AgentState, who: Mapping[str, Any], event: str, started: float, **fields: Any
) -> None:
    """The one place a drain or a resume is recorded: the audit log, and the durable history
    (as an operation ``rpcctl.drain`` / ``rpcctl.resume`` beside the jobs, failed when a hook
    failed), so ``rpcctl history`` shows who took the app out of service and when."""
    state.log.info(event, **who, **fields)
    failed = fields.get("failed") or []
    operation = "drain" if event == "drain.drained" else "resume"
    now = time.time()
    state.jobs.history.record(
        _history.Record(
            f"{operation}-{next(_operation_ids)}-{int(started * 1000)}",
            f"rpcctl.{operation}",
            str(who.get("caller")),
            who.get("identity"),
            started,
            now - started,
            protocol.FAILED if failed else protocol.SUCCEEDED,
            1 if failed else 0,
            f"hooks failed: {', '.join(failed)}" if failed else None,
            {},
        )
    )


_operation_ids = itertools.count(1)


# -- the work -----------------------------------------------------------------------------------


def _who(who: Mapping[str, Any]) -> str:
    """Who drained, as ``info`` shows it: the identity and its peer, or the peer alone."""
    identity = who.get("identity")
    return f"{identity} ({who['caller']})" if identity else str(who["caller"])


def _hooks_then_idle(kind: str, state: AgentState) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the hooks of *kind* (what ran, the names of those that failed), then let the
    next drain or resume in; a resume whose hooks all passed ends the drain at that moment."""
    global _busy, _drained
    ran: list[dict[str, Any]] | None = None
    try:
        ran = _run_hooks(kind, state)
    finally:
        failed = [h["name"] for h in ran or [] if not h["ok"]]
        with _lock:
            _busy = None
            if kind == "resume" and ran is not None and not failed:
                _drained = None
                readiness.set_drained(False)
    return ran, failed


def _busy_reply() -> str:
    """Busy (exit 7): another drain's or resume's hooks are running (called under _lock)."""
    assert _busy is not None
    kind, who, started = _busy
    took = time.monotonic() - started
    message = (
        f"a {kind} is running its on_{kind} hooks (asked by {who} {took:.0f}s ago); "
        "try again once it ends"
    )
    return wire.error(ErrorKind.BUSY, message, Reason.DRAIN_RUNNING)


def _run_hooks(kind: str, state: AgentState) -> list[dict[str, Any]]:
    """Run every hook of *kind* in registration order: ``[{name, ok, duration_s, error?}]``."""
    ran = []
    for name, func in list(_hooks[kind]):
        started = time.perf_counter()
        outcome: dict[str, Any] = {"name": name, "ok": True}
        try:
            _call(func, state.jobs.loop)
        # A hook may raise anything: report it by name, never take the agent down.
        except BaseException as exc:  # noqa: BLE001
            outcome.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:500])
            state.log.warning(f"{kind}.hook_failed", hook=name, error=outcome["error"])
        outcome["duration_s"] = round(time.perf_counter() - started, 3)
        ran.append(outcome)
    return ran


def _call(func: Callable[[], Any], loop: Any) -> None:
    result = func()
    if inspect.isawaitable(result):
        import asyncio  # here: an app without async hooks need not load it

        if loop is not None and loop.is_running() and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(_awaited(result), loop).result()
        else:
            asyncio.run(_awaited(result))


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _running(state: AgentState) -> list[dict[str, Any]]:
    return [{"id": j.id, "task": j.task.name} for j in state.jobs.running()]


def _wait_for_jobs(
    state: AgentState, peer_gone: Callable[[], bool], seconds: float
) -> list[dict[str, Any]]:
    """Wait up to *seconds* for the running jobs to end (jobs started meanwhile too); those
    still running then. Stops early when the asking client hangs up."""
    jobs = state.jobs
    deadline = time.monotonic() + seconds
    while (running := jobs.running()) and (left := deadline - time.monotonic()) > 0:
        # In slices, to notice a client that went away.
        running[0].wait(min(left, 0.5))
        if peer_gone():
            break
    return _running(state)
