"""``rpcctl eval``: run a registered task in a fresh process of the release, app up or down.

The counterpart of an Elixir release's ``bin/app eval``: for migrations before the app
starts (a Kubernetes init container or migration Job, a pre_start hook). The task runs in a
new Python process (:mod:`app_agent.eval`) with the release's interpreter (``[app] python``,
else the one rpcctl runs under), environment (``[app] env``) and working directory
(``[app] cwd``, as the runner gives the app), so ``myapp.tasks`` imports as it does in the
app. No agent starts and no socket appears. The task's lock is taken through the
configured backend (``RPCCTL_LOCKS``, else ``[app] locks``: what the runner hands the app),
so a live replica and an eval never run the same locked task at once.

Output, results and failures come back as the agent's jobs report them, and are raised as
the same :class:`~rpcctl.exceptions.RpcctlError` kinds. Unlike ``rpc``, where the job goes on
in the app, the task lives in its process: a timeout or Ctrl-C stops that process (SIGTERM,
which asks the task to stop as ``rpcctl cancel`` does, then SIGKILL after STOP_GRACE
seconds), and the kernel or the database releases its lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from app_agent.wire import environment as env
from rpcctl.client import encode_arguments, job_outcome, raise_error
from rpcctl.exceptions import CallTimeout, ConfigError, TaskFailed
from rpcctl.release.config import PYTHON_NAMES, Config

MODULE: Final = "app_agent.eval"
STOP_GRACE: Final = 5.0
"""Seconds between SIGTERM and SIGKILL when a timeout or Ctrl-C stops the task's process."""


class Stopped(Exception):
    """Ctrl-C: the task's process was stopped (``pid``)."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.pid = pid


def python(config: Config | None) -> str:
    """The interpreter that runs the task: ``[app] python`` (``python``: rpcctl's own, a
    path relative to the config file, or a name on PATH), else rpcctl's own."""
    given = config.python if config is not None else None
    if given is None or given in PYTHON_NAMES:
        return sys.executable
    if os.sep in given:
        assert config is not None
        return str(config.root / given)
    return shutil.which(given) or given


def environment(config: Config | None) -> dict[str, str]:
    """The app's environment, as the runner gives it, without what would make it the live
    app: no node (no agent starts here), no runner pid, no launcher name."""
    child = dict(os.environ)
    if config is not None:
        child.update(config.env)
        child[env.APP] = config.name
        child[env.ROOT] = str(config.root)
        if config.locks is not None:  # the release's default, as the runner hands it over
            child.setdefault(env.LOCKS, config.locks)
    for name in (env.NODE, env.RUNNER_PID, env.PROG, env.APP_PID, env.HOOK):
        child.pop(name, None)
    return child


def run(
    name: str,
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    config: Config | None,
    timeout: float | None = None,
    lock_wait: float = 0.0,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Any:
    """Run task *name* in a fresh process and return its result, or raise its failure.

    *on_event* gets its output lines and progress as they come; *on_warning* the notes of
    the eval process (a lock no running app would see). CallTimeout (the process was
    stopped) when *timeout* passes first; :class:`Stopped` after Ctrl-C.
    """
    args_json, kwargs_json = encode_arguments(args, kwargs)  # as rpc checks them
    child_env = environment(config)
    request = {
        "task": name,
        "args": json.loads(args_json),
        "kwargs": json.loads(kwargs_json),
        "modules": config.tasks if config is not None else [],
        "locks": child_env.get(env.LOCKS) or None,
        "lock_wait": lock_wait,
        "caller": f"rpcctl eval uid={os.getuid()} pid={os.getpid()}",
    }
    interpreter = python(config)
    cwd = config.cwd if config is not None else Path.cwd()
    try:
        # Its own process group: Ctrl-C at a terminal reaches rpcctl, which stops it in order.
        proc = subprocess.Popen(
            [interpreter, "-m", MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
            env=child_env,
            process_group=0,
        )
    except OSError as exc:
        what = "[app] python" if config is not None and config.python else "the interpreter"
        msg = f"cannot run {what} {interpreter} in {cwd}: {exc.strerror or exc}"
        raise ConfigError(msg) from None
    try:
        assert proc.stdin is not None
        assert proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(request).encode())
            proc.stdin.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        records = _records(proc.stdout.fileno(), deadline)
        end: dict[str, Any] | None = None
        with _forwarding_sigterm(proc):
            try:
                for record in records:
                    if record.get("type") == "end":
                        end = record
                        break
                    _dispatch(record, on_event, on_warning)
            except _Deadline:
                _stop(proc, on_event, on_warning)
                msg = (
                    f"{name} did not finish within {timeout:g}s; its process (pid {proc.pid}) "
                    "was stopped: eval runs a task in a process of its own, which a timeout "
                    "ends (rpc leaves the job running in the app)"
                )
                raise CallTimeout(msg) from None
            except KeyboardInterrupt:
                _stop(proc, on_event, on_warning)
                raise Stopped(proc.pid) from None
            status = proc.wait()  # it releases the task's lock before it exits
    finally:
        if proc.poll() is None:  # an error of our own: the task must not outlive us unseen
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    if end is None:
        msg = (
            f"the task's process ({interpreter} -m {MODULE}, pid {proc.pid}) exited with "
            f"status {_status(status)} before it reported an outcome (its stderr is above)"
        )
        raise TaskFailed(msg)
    if "error" in end:
        raise_error(end["error"])
    return job_outcome(end["summary"])


class _Deadline(Exception):
    """The caller's timeout passed."""


def _dispatch(
    record: dict[str, Any],
    on_event: Callable[[dict[str, Any]], None] | None,
    on_warning: Callable[[str], None] | None,
) -> None:
    if record.get("type") == "warning":
        if on_warning is not None:
            on_warning(str(record.get("message")))
    elif on_event is not None:
        on_event(record)


def _records(fd: int, deadline: float | None) -> Iterator[dict[str, Any]]:
    """The JSON lines on *fd* until its end; _Deadline when *deadline* passes first."""
    pending: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _Deadline
            if not selector.select(remaining):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            *lines, rest = chunk.split(b"\n")
            for line in lines:
                pending.append(line)
                whole = b"".join(pending)
                pending.clear()
                if whole.strip():
                    yield json.loads(whole)
            if rest:
                pending.append(rest)


def _stop(
    proc: subprocess.Popen[bytes],
    on_event: Callable[[dict[str, Any]], None] | None,
    on_warning: Callable[[str], None] | None,
) -> None:
    """SIGTERM (the task is asked to stop), its last output shown, SIGKILL after
    STOP_GRACE seconds; a second Ctrl-C kills it at once."""
    _signal_group(proc, signal.SIGTERM)
    assert proc.stdout is not None
    grace = time.monotonic() + STOP_GRACE
    try:
        for record in _records(proc.stdout.fileno(), grace):
            if record.get("type") != "end":
                _dispatch(record, on_event, on_warning)
        proc.wait(timeout=max(grace - time.monotonic(), 0.0))
    except (_Deadline, subprocess.TimeoutExpired, KeyboardInterrupt, ValueError):
        _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


@contextlib.contextmanager
def _forwarding_sigterm(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGTERM to rpcctl (an orchestrator stopping a migration Job) reaches the task's
    process, which asks the task to stop; rpcctl then reports how it ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: _signal_group(proc, signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _status(code: int) -> str:
    return f"{code}" if code >= 0 else f"{128 - code} (signal {-code})"
