"""Handlers of the core methods: is it there (ping), what is it (info, tasks), stop it.

Each handler takes the :class:`~app_agent._caller.Caller` and the method's arguments, already
bound and type-checked and its grant checked by the service (from
:data:`app_agent.wire.protocol.METHODS`), and answers with a reply envelope.
"""

from __future__ import annotations

import os
import platform
import sys
import time

import rpyc

from app_agent import wire
from app_agent._caller import Caller
from app_agent._server import drain as _drain
from app_agent._server import process as _process
from app_agent._server import readiness as readiness
from app_agent._version import __version__
from app_agent.wire import ErrorKind, Reason


def ping(caller: Caller) -> str:
    return "pong"


def info(caller: Caller) -> str:
    state = caller.state
    return wire.ok(
        {
            "app": state.app,
            "version": state.version,
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
            "jobs": [job.summary() for job in state.jobs.running()],
            "ready": readiness.ready,
            "drained": _drain.drained(),
            "event_loop": state.jobs.loop is not None,
        }
    )


def tasks(caller: Caller) -> str:
    """The registered tasks this caller's identity may run."""
    runnable = [t for t in caller.state.registry.all() if caller.identity.may_run(t.name)]
    return wire.ok([t.describe() for t in runnable])


def drain(caller: Caller, wait_jobs: float) -> str:
    """Not ready, the on_drain hooks, then up to *wait_jobs* s for running jobs to end."""
    return _drain.drain(caller.state, caller.who, caller.peer_gone, wait_jobs)


def resume(caller: Caller) -> str:
    """The on_resume hooks, then ready again (still drained when one fails)."""
    return _drain.resume(caller.state, caller.who)


def stop(caller: Caller, restart: bool) -> str:
    log = caller.state.log.bind(**caller.who)
    try:
        how = _process.request_stop(caller.state.stop_handler, restart, caller.state.log)
    except ValueError as exc:
        log.info("stop.refused", restart=restart, reason=str(exc))
        return wire.error(ErrorKind.USAGE, str(exc), Reason.NO_RUNNER)
    log.info("stop.requested", restart=restart, via=how)
    return wire.ok({"pid": os.getpid(), "via": how})
