"""Memory diagnosis inside the process: which allocation sites grew over N seconds.

``rpcctl mem`` starts :mod:`tracemalloc` (unless the app already traces), groups the traces
of a first snapshot, waits, groups a second one the same way and keeps the groups that grew.
A group is the allocation's *site*: the innermost frame of the app's own code (not the
standard library's, a third-party package's or the agent's, when the traceback reaches one),
or its file, or its whole traceback. Tracing started here is stopped at the end, which
frees every trace; tracing the app started itself is left on. One diagnosis at a time per
process, and it ends early, tracing stopped, when the client that asked goes away.
"""

from __future__ import annotations

import linecache
import os
import sys
import sysconfig
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from app_agent._introspection import snapshot as _introspect
from app_agent._introspection.frames import module_files, short_path

MAX_SECONDS = 3600.0
MAX_TOP = 1000
GROUPS = ("line", "file", "traceback")
FRAMES = {"line": 8, "file": 8, "traceback": 32}
"""Frames kept per allocation when we start tracing: enough to reach the app's frame from
inside a library call; each frame costs the host CPU on every allocation (docs/performance.md)."""

_OWN_FILES = frozenset((tracemalloc.__file__, __file__))
_Key = tuple[Any, ...]
_Frames = tuple[tuple[str, int], ...]


class MemBusy(Exception):
    """Another memory diagnosis of this app is running; only one at a time."""


class TracingStopped(Exception):
    """The app stopped tracemalloc itself while the diagnosis waited."""


# -- whose frame is it ----------------------------------------------------------------------


def _not_the_apps() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Directories whose files are not the app's: the agent's (with RPyC), the stdlib's."""
    agent = [os.path.dirname(os.path.abspath(__file__))]
    rpyc_file = getattr(sys.modules.get("rpyc"), "__file__", None)
    if isinstance(rpyc_file, str):
        agent.append(os.path.dirname(os.path.abspath(rpyc_file)))
    paths = sysconfig.get_paths()
    stdlib = {paths["stdlib"], paths["platstdlib"]}
    stdlib |= {os.path.realpath(d) for d in list(stdlib)}
    return tuple(d + "/" for d in agent), tuple(d.rstrip("/") + "/" for d in stdlib)


# Read before any tracing starts: sysconfig caches what it computes, which would show as growth.
_AGENT, _STDLIB = _not_the_apps()


def rank(filename: str) -> int:
    """0 for the app's code, 1 for a third-party package's, 2 for the agent's, the standard
    library's or a frame without a file (``<frozen ...>``)."""
    if filename.startswith(("<", *_AGENT)):
        return 2
    # Before the stdlib: a Python built from source keeps site-packages inside its stdlib.
    if "/site-packages/" in filename or "/dist-packages/" in filename:
        return 1
    return 2 if filename.startswith(_STDLIB) else 0


def site(frames: _Frames) -> int:
    """Index (in *frames*, outermost first) of the allocation's site: the innermost frame of
    the best rank (the app's, else a package's, else the innermost)."""
    best, best_rank = len(frames) - 1, 3
    for index in range(len(frames) - 1, -1, -1):
        found = rank(frames[index][0])
        if found < best_rank:
            best, best_rank = index, found
            if found == 0:
                break
    return best


# -- grouping and comparing -----------------------------------------------------------------


class _Group:
    __slots__ = ("count", "frames", "largest", "site", "size")

    def __init__(self, frames: _Frames, site_index: int) -> None:
        self.size = 0
        self.count = 0
        self.frames = frames  # the traceback of its largest member, shown as its example
        self.site = site_index
        self.largest = -1


def _grouped(snapshot: tracemalloc.Snapshot, group_by: str) -> dict[_Key, _Group]:
    """The snapshot's traces grouped by site (line), the site's file, or whole traceback."""
    groups: dict[_Key, _Group] = {}
    for stat in snapshot.statistics("traceback"):
        frames = tuple((f.filename, f.lineno) for f in stat.traceback)  # outermost first
        if frames and frames[-1][0] in _OWN_FILES:
            continue  # this diagnosis's own allocations: the first snapshot and its groups
        index = site(frames)
        key: _Key
        if group_by == "line":
            key = frames[index]
        elif group_by == "file":
            key = (frames[index][0],)
        else:
            key = frames
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(frames, index)
        group.size += stat.size
        group.count += stat.count
        if stat.size > group.largest:
            group.largest, group.frames, group.site = stat.size, frames, index
    return groups


def compare(
    before: dict[_Key, _Group], after: dict[_Key, _Group], group_by: str, top: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The *top* groups that grew most (bytes, then blocks), as plain data; and the totals."""
    grew = []
    total = {"size_diff": 0, "count_diff": 0, "grew": 0}
    for key, group in after.items():
        old = before.get(key)
        size_diff = group.size - (old.size if old else 0)
        count_diff = group.count - (old.count if old else 0)
        total["size_diff"] += size_diff
        total["count_diff"] += count_diff
        if size_diff > 0:
            grew.append((size_diff, count_diff, group))
    for key, group in before.items():
        if key not in after:  # freed entirely
            total["size_diff"] -= group.size
            total["count_diff"] -= group.count
    total["grew"] = len(grew)
    grew.sort(key=lambda g: (-g[0], -g[1]))
    modules = module_files()
    return [_entry(g, s, c, group_by, modules) for s, c, g in grew[:top]], total


def _entry(
    group: _Group, size_diff: int, count_diff: int, group_by: str, modules: dict[str, str]
) -> dict[str, Any]:
    filename, line = group.frames[group.site]
    innermost = group.frames[-1]
    return {
        "file": filename,
        "short": short_path(filename, modules),
        "line": None if group_by == "file" else line,
        "code": "" if group_by == "file" else linecache.getline(filename, line).strip(),
        "size_diff": size_diff,
        "count_diff": count_diff,
        "size": group.size,
        "count": group.count,
        # Where the bytes were allocated when that is not the app's frame (inside json, ...).
        "via": None if group.site == len(group.frames) - 1 else _frame(*innermost, modules),
        "traceback": [_frame(f, n, modules) for f, n in group.frames],
    }


def _frame(filename: str, line: int, modules: dict[str, str]) -> dict[str, Any]:
    return {
        "file": filename,
        "short": short_path(filename, modules),
        "line": line,
        "code": linecache.getline(filename, line).strip(),
    }


# -- one diagnosis at a time ----------------------------------------------------------------

_lock = threading.Lock()
_active: tuple[str, float, float, bool] | None = None
"""The running diagnosis: who asked, when (monotonic), for how long, and whether it started
tracing (and so must stop it)."""


def diagnose(
    seconds: float,
    top: int,
    group_by: str,
    caller: str,
    wait: Callable[[float], bool],
) -> dict[str, Any] | None:
    """Trace for *seconds* and return the *top* sites that grew; None when *wait* (which
    waits up to its argument in seconds) says the client went away first. MemBusy while
    another diagnosis runs; TracingStopped when the app stopped tracing meanwhile."""
    global _active
    with _lock:
        if _active is not None:
            who, since, length, _ = _active
            elapsed = time.monotonic() - since
            msg = (
                f"a memory diagnosis is already running (asked by {who} {elapsed:.0f}s ago, "
                f"{max(length - elapsed, 0):.0f}s left); one at a time"
            )
            raise MemBusy(msg)
        already = tracemalloc.is_tracing()
        _active = (caller, time.monotonic(), seconds, not already)
    rss_before = _rss()
    try:
        if not already:
            tracemalloc.start(FRAMES[group_by])
        frames = tracemalloc.get_traceback_limit()
        work = time.perf_counter()
        first = tracemalloc.take_snapshot()
        began = time.monotonic()
        # Grouped at once (tiny when tracing just started): the groups weigh less than the
        # snapshot when the app already traced a large heap.
        before = _grouped(first, group_by)
        del first
        work = time.perf_counter() - work
        if not wait(max(seconds - (time.monotonic() - began), 0.0)):
            return None
        if not tracemalloc.is_tracing():
            msg = "the app stopped tracemalloc itself while the diagnosis ran"
            raise TracingStopped(msg)
        traced, peak = tracemalloc.get_traced_memory()
        held = tracemalloc.get_tracemalloc_memory()
        started = time.perf_counter()
        last = tracemalloc.take_snapshot()
        elapsed = time.monotonic() - began
        rss_during = _rss()
        work += time.perf_counter() - started
    finally:
        with _lock:
            if not already:
                tracemalloc.stop()  # frees every trace; the snapshot is a copy
            _active = None
    started = time.perf_counter()
    # Compared after tracing stopped: untraced, this work runs several times faster.
    after = _grouped(last, group_by)
    del last
    found, total = compare(before, after, group_by, top)
    work += time.perf_counter() - started
    return {
        "top": found,
        "seconds": round(elapsed, 3),
        "group_by": group_by,
        "grew": total["grew"],
        "size_diff": total["size_diff"],
        "count_diff": total["count_diff"],
        "tracing": {
            "already": already,
            "frames": frames,
            "left_on": already,
        },
        "overhead": {
            "tracemalloc_bytes": held,
            "traced_bytes": traced,
            "traced_peak_bytes": peak,
            "rss_before_bytes": rss_before,
            "rss_during_bytes": rss_during,
            "snapshots_s": round(work, 4),
        },
    }


def _rss() -> int | None:
    return _introspect._proc_status().get("VmRSS")


def _after_fork_in_child() -> None:
    """A child forked mid-diagnosis (a pre-fork server) inherits the tracing hooks but not
    the thread that would stop them: stop them there, and free the one-at-a-time slot."""
    global _active, _lock
    if _active is not None and _active[3] and tracemalloc.is_tracing():
        tracemalloc.stop()
    _active = None
    _lock = threading.Lock()  # the parent's may have been held by a thread the child lacks


os.register_at_fork(after_in_child=_after_fork_in_child)
