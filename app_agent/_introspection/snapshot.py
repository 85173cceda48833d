"""Looking inside the live app from its own agent: thread stacks and process stats.

Everything here runs only when an operator asks (``rpcctl stack``, ``stats``; log levels are
:mod:`app_agent._introspection.loglevels`); nothing polls. What it reads it reads under the
GIL from the standard library's own views (``sys._current_frames()``, ``gc``,
``/proc/self``), so it needs no ptrace and works where containers forbid it."""

from __future__ import annotations

import collections
import gc
import linecache
import os
import platform
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from app_agent._introspection import health as _health
from app_agent._jobs.table import Job, JobTable
from app_agent._version import __version__

MAX_FRAMES = 500
"""Frames kept per thread or task (the innermost ones); deeper stacks say how many were cut."""
AGENT_THREAD_PREFIX = "rpcctl-"
"""Every thread the agent starts is named with this prefix."""
MAX_OBJECT_TYPES = 1000

# -- stack -------------------------------------------------------------------------------------


def stack(app: str, loop: Any) -> dict[str, Any]:
    """Every thread's frames (innermost last), and the asyncio tasks of the app's loop."""
    current = sys._current_frames()
    by_ident = {t.ident: t for t in threading.enumerate()}
    main_ident = threading.main_thread().ident
    threads = []
    for ident, frame in current.items():
        thread = by_ident.get(ident)
        agent = _is_agent_thread(thread)
        busy = _running_app_code(frame) if agent else None
        frames, cut = frame_list(frame)
        threads.append(
            {
                "name": thread.name if thread is not None else f"<unregistered {ident}>",
                "ident": ident,
                "native_id": getattr(thread, "native_id", None),
                "daemon": thread.daemon if thread is not None else None,
                "main": ident == main_ident,
                "agent": agent,
                "idle": agent and busy is None,
                "busy": busy,
                "frames": frames,
                "frames_cut": cut,
            }
        )
    del current  # frames keep their locals alive

    def order(t: dict[str, Any]) -> tuple[int, str, int]:
        rank = 0 if t["main"] else 1 if not t["agent"] else 2 if t["busy"] else 3
        return (rank, t["name"], t["ident"])

    threads.sort(key=order)
    return {
        "pid": os.getpid(),
        "app": app,
        "python": platform.python_version(),
        "threads": threads,
        "asyncio": _asyncio_tasks(loop) if loop is not None else None,
    }


def _is_agent_thread(thread: threading.Thread | None) -> bool:
    if thread is None:
        return False
    if thread.name.startswith(AGENT_THREAD_PREFIX):
        return True
    # A job's timeout timer: a threading.Timer around Job.expire.
    function = getattr(thread, "function", None)
    return isinstance(thread, threading.Timer) and isinstance(
        getattr(function, "__self__", None), Job
    )


_JOB_ENTRY = JobTable._run.__code__
_HEALTH_ENTRY = _health._Run.body.__code__


def _running_app_code(frame: Any) -> dict[str, Any] | None:
    """What app code an agent thread runs now (a job's task, a health check), if any."""
    while frame is not None:
        code = frame.f_code
        if code is _JOB_ENTRY:
            job = frame.f_locals.get("job")
            if isinstance(job, Job):
                return {"job": job.id, "task": job.task.name}
        elif code is _HEALTH_ENTRY:
            run = frame.f_locals.get("self")
            check = getattr(run, "check", None)
            if isinstance(check, _health.Check):
                return {"health_check": check.name}
        frame = frame.f_back
    return None


def frame_list(frame: Any, limit: int = MAX_FRAMES) -> tuple[list[dict[str, Any]], int]:
    """``[{file, line, function, code}]`` from the outermost frame to *frame* (the innermost),
    keeping the innermost *limit*; and how many outer frames were cut."""
    frames: list[dict[str, Any]] = []
    cut = 0
    while frame is not None:
        if len(frames) < limit:
            frames.append(_frame(frame.f_code, frame.f_lineno))
        else:
            cut += 1
        frame = frame.f_back
    frames.reverse()
    return frames, cut


def _frame(code: Any, line: int | None) -> dict[str, Any]:
    line = line if line is not None else code.co_firstlineno
    return {
        "file": code.co_filename,
        "line": line,
        "function": code.co_qualname,
        "code": linecache.getline(code.co_filename, line).strip(),
    }


def _asyncio_tasks(loop: Any) -> dict[str, Any]:
    """The loop's unfinished tasks, each with the chain of coroutines it is suspended in.

    Read from this thread, under the GIL: a blocked loop (the case worth diagnosing) cannot
    answer a callback, and reading coroutine frames needs nothing from the loop.
    """
    import asyncio

    try:
        tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    except RuntimeError as exc:  # the task set kept changing under us
        return {"running": loop.is_running(), "tasks": [], "error": str(exc)}
    described = []
    for task in tasks:
        coro = task.get_coro()
        frames, awaiting = coroutine_chain(coro)
        # What the task itself waits on (a coroutine chain ends in a future's iterator).
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is not None:
            awaiting = _describe_awaited(waiter)
        described.append(
            {
                "name": task.get_name(),
                "coroutine": _coroutine_name(coro),
                "state": _coroutine_state(coro),
                "frames": frames,
                "awaiting": awaiting,
            }
        )
    return {"running": loop.is_running(), "tasks": described}


def coroutine_chain(coro: Any) -> tuple[list[dict[str, Any]], str | None]:
    """The frames of *coro* and of the coroutines it awaits, outermost first; and the
    innermost awaited object that is not a coroutine (a Future, usually), described."""
    frames: list[dict[str, Any]] = []
    awaiting: str | None = None
    while coro is not None and len(frames) < MAX_FRAMES:
        if not any(hasattr(coro, a) for a in _FRAME_ATTRS):
            awaiting = _describe_awaited(coro)
            break
        frame = next((f for a in _FRAME_ATTRS if (f := getattr(coro, a, None)) is not None), None)
        if frame is None:  # finished
            break
        frames.append(_frame(frame.f_code, frame.f_lineno))
        coro = next((c for a in _AWAIT_ATTRS if (c := getattr(coro, a, None)) is not None), None)
    return frames, awaiting


_FRAME_ATTRS = ("cr_frame", "gi_frame", "ag_frame")
_AWAIT_ATTRS = ("cr_await", "gi_yieldfrom", "ag_await")


def _describe_awaited(obj: Any) -> str:
    kind = type(obj).__qualname__
    get_name = getattr(obj, "get_name", None)
    if callable(get_name):  # a Task
        kind = f"{kind} {get_name()!r}"
    done = getattr(obj, "done", None)
    if callable(done):
        try:
            return f"{kind} ({'done' if done() else 'pending'})"
        except Exception:  # noqa: BLE001  (a foreign awaitable's done() may do anything)
            return kind
    return kind


def _coroutine_name(coro: Any) -> str:
    qualname = getattr(coro, "__qualname__", type(coro).__qualname__)
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    module = frame.f_globals.get("__name__") if frame is not None else None
    return f"{module}.{qualname}" if module else str(qualname)


def _coroutine_state(coro: Any) -> str:
    if getattr(coro, "cr_running", False) or getattr(coro, "gi_running", False):
        return "running"
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if frame is None:
        return "finished"
    return "suspended" if frame.f_lasti >= 0 else "created"


# -- stats -------------------------------------------------------------------------------------


def stats(app: str, node: str, agent_started_at: float, objects: int = 0) -> dict[str, Any]:
    """pid, uptime, memory, CPU, threads, descriptors, GC, versions; with *objects*, the
    most common object types."""
    status = _proc_status()
    usage = _rusage()
    started_at = _process_started_at() or agent_started_at
    times = os.times()
    now = time.time()
    result: dict[str, Any] = {
        "pid": os.getpid(),
        "app": app,
        "node": node,
        "started_at": round(started_at, 3),
        "uptime_s": round(now - started_at, 3),
        "agent_uptime_s": round(now - agent_started_at, 3),
        "memory": {
            "rss_bytes": status.get("VmRSS"),
            "peak_rss_bytes": status.get("VmHWM") or usage.get("maxrss"),
        },
        "cpu": {"user_s": round(times.user, 3), "system_s": round(times.system, 3)},
        "threads": {"python": threading.active_count(), "os": status.get("Threads")},
        "fds": _fds(),
        "gc": _gc(),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "packages": packages(),
    }
    if objects > 0:
        result["objects"] = object_counts(objects)
    return result


def _proc_status() -> dict[str, int]:
    """Sizes (bytes) and counts from /proc/self/status; empty where there is no /proc."""
    found: dict[str, int] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    parts = value.split()
                    number = int(parts[0])
                    found[key] = number * 1024 if parts[1:] == ["kB"] else number
    except (OSError, ValueError, IndexError):
        return {}
    return found


def _rusage() -> dict[str, int]:
    try:
        import resource
    except ImportError:  # not on Unix
        return {}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"maxrss": maxrss if sys.platform == "darwin" else maxrss * 1024}


def _process_started_at() -> float | None:
    """When this process started (epoch seconds), from /proc; None without /proc."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _fds() -> dict[str, Any]:
    opened: int | None = None
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            # Listing opens the directory itself, which shows up in the listing.
            opened = len(os.listdir(directory)) - 1
            break
        except OSError:
            continue
    limit: int | None = None
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = None if soft == resource.RLIM_INFINITY else soft
    except (ImportError, OSError, ValueError):
        pass
    return {"open": opened, "limit": limit}


def _gc() -> dict[str, Any]:
    counts = gc.get_count()
    return {
        "enabled": gc.isenabled(),
        "thresholds": list(gc.get_threshold()),
        "generations": [
            {
                "generation": i,
                "count": counts[i],
                "collections": s.get("collections"),
                "collected": s.get("collected"),
                "uncollectable": s.get("uncollectable"),
            }
            for i, s in enumerate(gc.get_stats())
        ],
        "garbage": len(gc.garbage),
    }


_distributions: Mapping[str, list[str]] | None = None
_distributions_lock = threading.Lock()
"""Listing the installed distributions takes ~120 ms: done once, by the first caller, while
concurrent first callers (rpcctl top polling a fleet's nodes at once) wait for it."""


def packages() -> dict[str, str]:
    """Versions of the installed distributions the app has imported something from."""
    global _distributions
    import importlib.metadata as metadata

    with _distributions_lock:
        if _distributions is None:
            _distributions = metadata.packages_distributions()
        distributions = _distributions
    loaded = {name.partition(".")[0] for name in list(sys.modules)}
    versions = {"rpcctl": __version__}
    for top in sorted(loaded & distributions.keys()):
        for dist in distributions[top]:
            try:
                versions.setdefault(dist, metadata.version(dist))
            except metadata.PackageNotFoundError:
                continue
    return dict(sorted(versions.items()))


def object_counts(top: int) -> list[dict[str, Any]]:
    """The *top* most common types among the objects the garbage collector tracks."""
    counts: collections.Counter[type] = collections.Counter(map(type, gc.get_objects()))
    found = []
    for kind, count in counts.most_common(min(top, MAX_OBJECT_TYPES)):
        module = getattr(kind, "__module__", "")
        name = kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
        found.append({"type": name, "count": count})
    return found
