"""``python -m app_agent.eval``: run one registered task in this fresh process.

``rpcctl eval EXPR`` (and ``bin/NAME eval``) starts this module with the release's
interpreter, environment and working directory, for an app that is not running (a
Kubernetes init container, a migration Job, a pre_start hook). It hands over the call on
stdin, one JSON object::

    {"task": "myapp.tasks.migrate", "args": [], "kwargs": {}, "modules": ["myapp.tasks"],
     "locks": "file:/srv/myapp/run/locks", "lock_wait": 0, "caller": "rpcctl eval ..."}

and reads on stdout, as JSON lines, the job's events as they come (``stdout``/``stderr``
lines, ``progress``, ``dropped``), ``{"type": "warning", "message": ...}`` notes, and last
``{"type": "end", "summary": {...}}`` (the job's summary, as ``events`` answers it) or
``{"type": "end", "error": {...}}`` (what kept the task from running). Anything else this
process writes to its stdout goes to its stderr, so the report stays parseable.

The task is found in the registry only: the module part of its dotted name is imported
(and the modules of ``[app] tasks``, for aliases), and a function that is not a registered
``@task`` is not run. It runs as a job (:mod:`app_agent._jobs.table`), with the same capture of
its output, the same conversion of its result and the same lock backends and messages as
in a live agent. No agent starts here: ``app_agent.start()`` is refused in this process, so
a task module that starts the app when imported is named instead of starting it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, TextIO

from app_agent import wire
from app_agent.wire import ErrorKind, Reason
from app_agent.wire import environment as env

if TYPE_CHECKING:
    from app_agent._registry import Task

START_REFUSED = (
    "app_agent.start() was called while `rpcctl eval` imported the task modules: a task "
    "module must be importable on its own, without starting the app (start the agent in "
    "the app's entry point, e.g. its __main__, not at import)"
)
LEASE_RELEASE = 30.0
"""Seconds the process waits, after the job's end, for its thread to release the lock."""
FOLLOWER = 1
"""This process, as the job's one follower: the task waits for the report to be written."""


class Reporter:
    """JSON lines to the parent; a parent that is gone stops the report, not the task."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.gone = False

    def send(self, record: dict[str, Any]) -> None:
        if self.gone:
            return
        try:
            self.out.write(wire.dumps(record) + "\n")
            self.out.flush()
        except (BrokenPipeError, OSError):
            self.gone = True  # like a job whose client left: it goes on

    def end_error(self, kind: ErrorKind, message: str, **extra: Any) -> None:
        self.send({"type": "end", "error": {"kind": str(kind), "message": message, **extra}})


class _Refused(Exception):
    """The call cannot run; its error kind and message end the report."""

    def __init__(self, kind: ErrorKind, message: str, reason: Reason, **extra: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.extra = {"reason": str(reason), **extra}


def main() -> int:
    # The report owns the real stdout; the task's and the app's stray writes go to stderr.
    report = Reporter(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)
    try:
        request = _request(sys.stdin.read())
        run(request, report)
    except _Refused as refused:
        report.end_error(refused.kind, refused.message, **refused.extra)
    return 0


def _request(text: str) -> dict[str, Any]:
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise _Refused(
            ErrorKind.USAGE, f"eval: the request is not JSON ({exc})", Reason.BAD_ARGUMENTS
        ) from None
    types: dict[str, type | tuple[type, ...]] = {
        "task": str,
        "args": list,
        "kwargs": dict,
        "modules": list,
        "lock_wait": (int, float),
        "caller": str,
    }
    if not isinstance(request, dict) or not all(
        isinstance(request.get(k), t) for k, t in types.items()
    ):
        raise _Refused(
            ErrorKind.USAGE, f"eval: the request must hold {sorted(types)}", Reason.BAD_ARGUMENTS
        )
    return request


def run(request: dict[str, Any], report: Reporter) -> None:
    """Find the task, take its lock, run it as a job and report it (see the module doc)."""
    from app_agent import _agent
    from app_agent._jobs import capture as _capture
    from app_agent._jobs.locks import MemoryLocks
    from app_agent._jobs.locks import backend as lock_backend
    from app_agent._jobs.table import JobTable

    _agent.refusal = START_REFUSED
    task = find_task(request["task"], request["modules"])
    try:
        args, kwargs, _named = task.bind(request["args"], request["kwargs"])
    except TypeError as exc:
        raise _Refused(
            ErrorKind.USAGE,
            f"{task.name}: {exc}",
            Reason.BAD_ARGUMENTS,
            signature=task.display_signature,
        ) from None
    spec = request.get("locks") or None
    try:
        locks = lock_backend(spec)
    except (ValueError, RuntimeError, OSError) as exc:  # ConfigurationError is a ValueError
        raise _Refused(ErrorKind.USAGE, f"locks: {exc}", Reason.BAD_CONFIG) from None
    if task.lock is not None and isinstance(locks, MemoryLocks):
        report.send(
            {
                "type": "warning",
                "message": f"{task.name}'s lock {task.lock!r} is held in this process only "
                f"(no lock backend configured): a running app would not see it; set "
                f"[app] locks in rpcctl.toml or {env.LOCKS} (file:DIR or postgresql://...)",
            }
        )
    _capture.install()
    jobs = JobTable(locks)
    job = jobs.create(task, request["caller"])
    job.attach(FOLLOWER, 0)
    for signum in (signal.SIGTERM, signal.SIGINT):  # rpcctl's --timeout, Ctrl-C, SIGTERM
        signal.signal(signum, lambda *_: job.cancel())
    finished = threading.Event()
    job.on_finish = finished.set
    started = False
    # Busy, or no thread to run it on: the job has ended as failed with it, reported below.
    with contextlib.suppress(Exception):
        jobs.start(job, args, kwargs, float(request["lock_wait"]))
        started = True
    cursor = 0
    while True:
        snapshot = job.events_since(cursor, 1.0, FOLLOWER)
        if snapshot["dropped"]:
            report.send({"type": "dropped", "from_seq": cursor, "count": snapshot["dropped"]})
        for event in snapshot["events"]:
            report.send(event)
        cursor = snapshot["cursor"]
        if snapshot["state"] != "running":
            summary = {
                k: v for k, v in snapshot.items() if k not in ("events", "cursor", "dropped")
            }
            report.send({"type": "end", "summary": summary})
            break
    # The job's thread releases the task's lock last: let it, unless the task timed out and
    # goes on ignoring its cancellation; then the process's end is the job's end (the
    # kernel or the database releases the lock of a process that is gone).
    if started and (job.timed_out or not finished.wait(LEASE_RELEASE)):
        sys.stderr.flush()
        os._exit(0)


def find_task(name: str, modules: list[str]) -> Task:
    """The registered task *name*: after importing *modules* (``[app] tasks``), else the
    module part of its dotted name. A function that is not a registered task is not one."""
    from app_agent._registry import registry

    for module in modules:
        if not isinstance(module, str) or not module:
            raise _Refused(
                ErrorKind.USAGE, f"[app] tasks: {module!r} is not a module name", Reason.BAD_CONFIG
            )
        if not _import(module, wanted=module):
            msg = f"[app] tasks: no module named {module!r} (from {os.getcwd()})"
            raise _Refused(ErrorKind.USAGE, msg, Reason.BAD_CONFIG)
    found = registry.get(name)
    if found is not None:
        return found
    imported = None
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:end])
        if _import(candidate, wanted=name):
            imported = candidate
            break
    found = registry.get(name)
    if found is not None:
        return found
    raise _Refused(
        ErrorKind.NO_SUCH_TASK, _not_found(name, imported), Reason.NOT_IMPORTED, task=name
    )


def _import(module: str, wanted: str) -> bool:
    """Import *module*; False when it (or a package above it) does not exist. An import
    that starts the app, or raises, is reported as such."""
    from app_agent.exceptions import AgentError, StartRefused

    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            return False
        raise _imported_raised(module, wanted, exc) from None
    except StartRefused:
        raise _Refused(
            ErrorKind.USAGE, f"importing {module}: {START_REFUSED}", Reason.BAD_CONFIG
        ) from None
    except AgentError as exc:
        raise _imported_raised(module, wanted, exc) from None
    # Importing runs the module's code: whatever it raises is the app's code raising.
    except BaseException as exc:  # noqa: BLE001
        raise _imported_raised(module, wanted, exc) from None
    return True


def _imported_raised(module: str, wanted: str, exc: BaseException) -> _Refused:
    tb = exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return _Refused(
        ErrorKind.TASK_FAILED,
        f"importing {module} (for {wanted}) raised {type(exc).__qualname__}: {exc}",
        Reason.RAISED,
        type=type(exc).__qualname__,
        traceback=text,
    )


def _not_found(name: str, imported: str | None) -> str:
    from app_agent._registry import registry

    if imported is not None:
        attribute: Any = sys.modules[imported]
        for part in name[len(imported) + 1 :].split("."):
            attribute = getattr(attribute, part, None)
        if callable(attribute):
            return (
                f"{name} is not a registered task: eval runs only functions marked @task "
                "(it is not a way to run arbitrary code)"
            )
    hint = ""
    wanted = name.rsplit(".", 1)[-1]
    scored = [
        (difflib.SequenceMatcher(None, wanted, t.name.rsplit(".", 1)[-1]).ratio(), t.name)
        for t in registry.all()
    ]
    best = max(scored, default=(0.0, ""))
    if best[0] >= 0.75:
        hint = f" (did you mean {best[1]}?)"
    if "." not in name:
        where = "an alias is found only when its module is listed in [app] tasks of rpcctl.toml"
    elif imported is None:
        where = f"no module of that name imports from {os.getcwd()}"
    else:
        where = f"{imported} registers no task of that name"
    return f"no task named {name!r}{hint}: {where}"


if __name__ == "__main__":
    sys.exit(main())
