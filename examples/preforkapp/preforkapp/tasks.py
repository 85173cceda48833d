"""Release tasks of preforkapp: they run in gunicorn's arbiter, which manages the workers."""

from __future__ import annotations

import os
import signal

from app_agent import task


@task
def arbiter() -> dict[str, int]:
    """The arbiter's pid and its workers' pids."""
    from preforkapp import gunicorn_hooks

    server = gunicorn_hooks.arbiter
    workers = sorted(server.WORKERS) if server is not None else []
    return {"pid": os.getpid(), "workers": workers}


@task
def reload_workers() -> str:
    """Gracefully replace every worker (gunicorn's SIGHUP), e.g. after a config change."""
    os.kill(os.getpid(), signal.SIGHUP)
    return "reloading"
