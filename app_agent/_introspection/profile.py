"""A sampling profiler inside the process: no ptrace, no restart, one profile at a time.

A sampler thread wakes *rate* times a second, reads every thread's frame with
``sys._current_frames()`` and counts each distinct stack (as code objects, so a tick costs
a frame walk and a dict update, not string formatting). Threads that used no CPU since the
previous tick are left out unless *idle* is asked for (on Linux, where each thread's CPU
clock can be read; elsewhere only the agent's own idle threads are left out), so the
profile shows where the app spends CPU rather than where it waits. The result is plain
data: a frame table and the counted stacks, outermost frame first.
"""

from __future__ import annotations

import collections
import itertools
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from app_agent._introspection import snapshot as _introspect
from app_agent._introspection.frames import module_files, short_path

DEFAULT_RATE = 100.0
MAX_RATE = 1000.0
MAX_SECONDS = 3600.0
_CHECK_EVERY = 0.25
"""Seconds between two looks at whether a profile's client is still there."""


class ProfilerBusy(Exception):
    """Another profile of this app is running; only one at a time. ``running`` is its id
    (``cancel`` ends it)."""

    def __init__(self, message: str, running: str) -> None:
        super().__init__(message)
        self.running = running


def _thread_cpu_clock(native_id: int) -> float | None:
    """A thread's CPU seconds by its kernel id (Linux's per-thread CPU clock); None when it
    cannot be read (the thread has ended, or this is not Linux)."""
    # The clock id Linux defines for a thread's CPU time (what pthread_getcpuclockid returns),
    # computed from the kernel thread id: safe for a thread that has already exited.
    try:
        return time.clock_gettime(((~native_id) << 3) | 6)
    except (OSError, OverflowError, AttributeError):
        return None


def cpu_clocks_available() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    return _thread_cpu_clock(threading.get_native_id()) is not None


class Profiler:
    """Samples every thread's stack *rate* times a second on its own daemon thread."""

    def __init__(self, rate: float = DEFAULT_RATE, idle: bool = False) -> None:
        self.rate = rate
        self.idle = idle
        self.cpu_clocks = cpu_clocks_available()
        self.ticks = 0
        self.samples = 0
        self.sampler_cpu = 0.0
        self.started_at = 0.0
        self.elapsed = 0.0
        self._stopping = False
        self.ended = "done"  # or why it ended early
        self._deadline = float("inf")
        self._counts: collections.Counter[tuple[str, tuple[int, ...]]] = collections.Counter()
        self._codes: dict[int, Any] = {}  # id -> code object, kept alive so ids stay unique
        self._cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._run, name="rpcctl-profiler", daemon=True)

    def start(self) -> None:
        self.started_at = time.time()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (within one tick) and wait for the sampler to end."""
        self._stopping = True
        if self._thread.ident is not None:  # started (a cancel may come just before)
            self._thread.join()

    def run_for(self, seconds: float, gone: Callable[[], bool] | None = None) -> None:
        """Sample for *seconds*, then stop; sooner when *gone* says the asker has left
        (checked a few times a second) or :meth:`stop` is called from elsewhere."""
        self._deadline = time.monotonic() + seconds
        self.start()
        while self._thread.is_alive():
            self._thread.join(None if gone is None else _CHECK_EVERY)
            if gone is not None and self._thread.is_alive() and gone():
                self.ended = "the client went away"
                self.stop()

    def _run(self) -> None:
        cpu_before = time.thread_time()
        began = time.monotonic()
        interval = 1.0 / self.rate
        next_at = began
        while True:
            next_at += interval
            if next_at > self._deadline:
                time.sleep(max(self._deadline - time.monotonic(), 0.0))
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                # A plain sleep, not a timed wait on an Event: a tick's wake-up is most of
                # the sampler's cost, and a sleep is the cheapest one.
                time.sleep(delay)
            else:
                next_at = time.monotonic()  # fell behind: skip the missed ticks
            if self._stopping:
                break
            self._sample()
        self.elapsed = time.monotonic() - began
        self.sampler_cpu = time.thread_time() - cpu_before

    def _sample(self) -> None:
        me = threading.get_ident()
        threads = {t.ident: t for t in threading.enumerate()}
        frames = sys._current_frames()
        self.ticks += 1
        for ident, top in frames.items():
            if ident == me:
                continue
            thread = threads.get(ident)
            if not self.idle and not self._active(ident, thread, top):
                continue
            codes = []
            frame: Any = top
            while frame is not None:
                code = frame.f_code
                key = id(code)
                if key not in self._codes:
                    self._codes[key] = code
                codes.append(key)
                frame = frame.f_back
            codes.reverse()
            name = thread.name if thread is not None else f"thread {ident}"
            self._counts[(name, tuple(codes))] += 1
            self.samples += 1
        del frames

    def _active(self, ident: int, thread: threading.Thread | None, frame: Any) -> bool:
        """Whether the thread used CPU since the previous tick (or, without per-thread CPU
        clocks, whether it is anything but an idle agent thread)."""
        native_id = getattr(thread, "native_id", None)
        if self.cpu_clocks and native_id is not None:
            now = _thread_cpu_clock(native_id)
            if now is None:
                return False
            last = self._cpu.get(ident)
            self._cpu[ident] = now
            return last is not None and now > last
        agent = _introspect._is_agent_thread(thread)
        return not agent or _introspect._running_app_code(frame) is not None

    def result(self) -> dict[str, Any]:
        """The profile as plain data: frames ``{name, file, short, line}`` and stacks
        ``{thread, frames: [index, ...] outermost first, count}``."""
        index: dict[int, int] = {}
        frames: list[dict[str, Any]] = []
        shorts: dict[str, str] = {}
        modules = module_files()
        stacks = []
        for (thread, codes), count in self._counts.most_common():
            indices = []
            for key in codes:
                if key not in index:
                    code = self._codes[key]
                    filename = code.co_filename
                    if filename not in shorts:
                        shorts[filename] = short_path(filename, modules)
                    index[key] = len(frames)
                    frames.append(
                        {
                            "name": code.co_qualname,
                            "file": filename,
                            "short": shorts[filename],
                            "line": code.co_firstlineno,
                        }
                    )
                indices.append(index[key])
            stacks.append({"thread": thread, "frames": indices, "count": count})
        return {
            "rate": self.rate,
            "seconds": round(self.elapsed, 3),
            "started_at": round(self.started_at, 3),
            "ticks": self.ticks,
            "samples": self.samples,
            "idle_included": self.idle,
            "cpu_filter": self.cpu_clocks and not self.idle,
            "sampler_cpu_s": round(self.sampler_cpu, 4),
            "ended": self.ended,
            "frames": frames,
            "stacks": stacks,
        }


_lock = threading.Lock()
_active: tuple[Profiler, str, float, float, str] | None = None
"""The running profile: the profiler, who asked, when (monotonic), for how long, its id."""
_ids = itertools.count(1)


def profile(
    seconds: float,
    rate: float,
    idle: bool,
    caller: str,
    gone: Callable[[], bool] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Profile the whole process for *seconds*, or until *gone* says the caller has left or
    :func:`cancel` is called with its id (``profile-N``, passed to *on_start*);
    ProfilerBusy while another profile runs."""
    global _active
    profiler = Profiler(rate, idle)
    with _lock:
        if _active is not None:
            _other, who, since, length, running = _active
            elapsed = time.monotonic() - since
            msg = (
                f"a profile is already running ({running}, asked by {who} {elapsed:.0f}s ago, "
                f"{max(length - elapsed, 0):.0f}s left); one at a time"
            )
            raise ProfilerBusy(msg, running)
        profile_id = f"profile-{next(_ids)}"
        _active = (profiler, caller, time.monotonic(), seconds, profile_id)
    try:
        if on_start is not None:
            on_start(profile_id)
        profiler.run_for(seconds, gone)
    finally:
        with _lock:
            _active = None
    result = profiler.result()
    result["id"] = profile_id
    return result


def cancel(profile_id: str, by: str) -> bool:
    """End the running profile *profile_id* (its samples so far go to its caller); False
    when no such profile runs."""
    with _lock:
        if _active is None or _active[4] != profile_id:
            return False
        profiler = _active[0]
    profiler.ended = f"cancelled by {by}"
    profiler.stop()
    return True
