"""The RPyC service: the only methods a caller can reach.

Every argument arrives as a ``str`` holding JSON and every result leaves as a ``str``
holding a reply envelope (see :mod:`app_agent.wire`), so no netref ever crosses in either
direction: the service never touches an object that lives in the caller's process.
"""

from __future__ import annotations

import difflib
import os
import platform
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import rpyc

from app_agent import wire
from app_agent._jobs import JobTable, TaskFailure
from app_agent._registry import Registry
from app_agent._version import __version__
from app_agent.wire import ErrorKind

if TYPE_CHECKING:
    from collections.abc import Callable

PROTOCOL_CONFIG: dict[str, Any] = {
    # Only the service's allow-listed methods are reachable (see AgentService._rpyc_getattr).
    "allow_safe_attrs": False,
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "propagate_SystemExit_locally": False,
    "propagate_KeyboardInterrupt_locally": False,
    "log_exceptions": False,
}


class AgentState:
    """What every connection's service shares: the registry, jobs, identity."""

    def __init__(self, registry: Registry, node: str, app: str, log: Any) -> None:
        self.registry = registry
        self.node = node
        self.app = app
        self.log = log
        self.jobs = JobTable()
        self.started_at = time.time()
        self.stop_handler: Callable[[], None] | None = None

    def request_stop(self, restart: bool) -> str:
        """Stop (or restart) the app gracefully; how it was asked: runner, handler or signal.

        Under ``rpcctl start`` the runner is asked, so its pre_stop and post_stop hooks run;
        otherwise the app's own stop handler runs, or the process gets SIGTERM.
        """
        runner = os.environ.get(wire.RUNNER_ENV, "")
        if runner.isdigit() and _alive(int(runner)):
            os.kill(int(runner), signal.SIGHUP if restart else signal.SIGTERM)
            return "runner"
        if restart:
            msg = "restart needs the release runner: start the app with `rpcctl start`"
            raise ValueError(msg)
        if self.stop_handler is not None:
            # On its own thread: the handler may stop the agent, this connection included.
            threading.Thread(target=self.stop_handler, name="rpcctl-stop", daemon=True).start()
            return "handler"
        os.kill(os.getpid(), signal.SIGTERM)
        return "signal"


class AgentService(rpyc.Service):  # type: ignore[misc]
    """One instance per connection; the caller can reach only ``EXPOSED``."""

    EXPOSED: ClassVar[frozenset[str]] = frozenset({"ping", "info", "tasks", "call", "stop"})

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._caller = "unknown"
        self._auth = "none"

    def on_connect(self, conn: Any) -> None:
        credentials = conn._config.get("credentials")
        if isinstance(credentials, dict):
            self._caller = str(credentials.get("peer", "unknown"))
            self._auth = str(credentials.get("auth", "none"))

    def _rpyc_getattr(self, name: Any) -> Any:
        if type(name) is str and name in self.EXPOSED:
            return getattr(self, f"exposed_{name}")
        msg = "access denied"
        raise AttributeError(msg)

    def _rpyc_setattr(self, name: Any, value: Any) -> None:
        msg = "access denied"
        raise AttributeError(msg)

    def _rpyc_delattr(self, name: Any) -> None:
        msg = "access denied"
        raise AttributeError(msg)

    # -- the exposed methods ------------------------------------------------------------

    def exposed_ping(self) -> str:
        return "pong"

    def exposed_info(self) -> str:
        state = self._state
        return wire.ok(
            {
                "app": state.app,
                "pid": os.getpid(),
                "node": state.node,
                "started_at": state.started_at,
                "uptime_s": round(time.time() - state.started_at, 3),
                "versions": {
                    "rpcctl": __version__,
                    "protocol": wire.PROTOCOL_VERSION,
                    "python": platform.python_version(),
                    "rpyc": rpyc.__version__,
                },
                "python": sys.executable,
                "jobs": [job.describe() for job in state.jobs.running()],
            }
        )

    def exposed_tasks(self) -> str:
        return wire.ok([t.describe() for t in self._state.registry.all()])

    def exposed_stop(self, restart: Any = False) -> str:
        log = self._state.log.bind(caller=self._caller, auth=self._auth)
        if type(restart) is not bool:
            return wire.error(ErrorKind.USAGE, "stop() takes one boolean: restart")
        try:
            how = self._state.request_stop(restart)
        except ValueError as exc:
            log.info("stop.refused", restart=restart, reason=str(exc))
            return wire.error(ErrorKind.USAGE, str(exc))
        log.info("stop.requested", restart=restart, via=how)
        return wire.ok({"pid": os.getpid(), "via": how})

    def exposed_call(self, name: Any, args_json: Any = "[]", kwargs_json: Any = "{}") -> str:
        started = time.perf_counter()
        log = self._state.log
        who = {"caller": self._caller, "auth": self._auth}
        if not (type(name) is str and type(args_json) is str and type(kwargs_json) is str):
            log.warning("call.refused", reason="arguments are not JSON text", **who)
            return wire.error(ErrorKind.USAGE, "call() takes a task name and JSON text only")
        task = self._state.registry.get(name)
        if task is None:
            log.info("call.no_such_task", task=name, outcome="no_such_task", **who)
            return wire.error(ErrorKind.NO_SUCH_TASK, self._no_such_task(name))
        try:
            args, kwargs = _decode_arguments(args_json, kwargs_json)
            bound_args, bound_kwargs, named = task.bind(args, kwargs)
        except (ValueError, TypeError) as exc:
            log.info("call.bad_arguments", task=task.name, outcome="usage", error=str(exc), **who)
            return wire.error(
                ErrorKind.USAGE, f"{task.name}: {exc}", signature=task.display_signature
            )
        job = self._state.jobs.start(task, bound_args, bound_kwargs, self._caller, inline=True)
        # One line per call. Argument names and sizes always; values only where the task
        # opted in (arguments may carry secrets).
        fields: dict[str, Any] = {
            **who,
            "task": task.name,
            "job": job.id,
            "arguments": {k: len(wire.dumps(v)) for k, v in named.items()},
        }
        if task.log_values:
            fields["values"] = named
        try:
            result = job.future.result()
        except TaskFailure as failure:
            log.warning(
                "call.finished",
                outcome="raised",
                error=f"{failure.type}: {failure.message}",
                duration_ms=_ms(started),
                **fields,
            )
            return wire.error(
                ErrorKind.TASK_FAILED,
                f"{task.name} raised {failure.type}: {failure.message}",
                type=failure.type,
                traceback=failure.traceback,
                job=job.id,
            )
        log.info("call.finished", outcome="ok", duration_ms=_ms(started), **fields)
        try:
            return wire.ok(result)
        except (RecursionError, ValueError):
            # A result that cannot even be converted (a self-referencing structure) is sent as
            # its repr, by the documented rule: the caller always gets an answer.
            return wire.ok(repr(result))

    def _no_such_task(self, name: str) -> str:
        hint = ""
        # Suggest a task whose last name part is close to the one asked for (a typo).
        wanted = name.rsplit(".", 1)[-1]
        scored = [
            (difflib.SequenceMatcher(None, wanted, t.name.rsplit(".", 1)[-1]).ratio(), t.name)
            for t in self._state.registry.all()
        ]
        best = max(scored, default=(0.0, ""))
        if best[0] >= 0.75:
            hint = f" (did you mean {best[1]}?)"
        return f"no task named {name!r}{hint}; `rpcctl tasks` lists the registered tasks"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _decode_arguments(args_json: str, kwargs_json: str) -> tuple[list[Any], dict[str, Any]]:
    if args_json == "[]" and kwargs_json == "{}":  # the common call: no arguments
        return [], {}
    try:
        args = wire.loads(args_json)
        kwargs = wire.loads(kwargs_json)
    except ValueError as exc:
        msg = f"arguments are not valid JSON: {exc}"
        raise ValueError(msg) from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        msg = "arguments must be a JSON list and keyword arguments a JSON object"
        raise ValueError(msg)
    return args, kwargs


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
