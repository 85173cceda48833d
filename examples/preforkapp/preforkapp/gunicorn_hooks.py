"""gunicorn server hooks that put the agent in the arbiter (the master process).

Why the arbiter: it lives as long as the service, exists once, and manages the workers, so
one agent answers for the whole server and its tasks can act on every worker. The workers
are forked from the arbiter after the agent started; app_agent's fork handler makes sure a
worker never inherits a half-alive copy of it. (To run tasks in the workers' app state,
start the agent in exactly one worker instead, e.g. in post_worker_init when
``worker.age == 1``; with preload_app the arbiter already has the app imported.)
"""

from __future__ import annotations

import os
from typing import Any

import app_agent

arbiter: Any = None


def when_ready(server: Any) -> None:
    global arbiter
    arbiter = server
    app_agent.start(
        node=os.environ.get("RPCCTL_NODE", "unix:run/preforkapp.sock"),
        tasks=["preforkapp.tasks"],
        app="preforkapp",
    )


def on_exit(server: Any) -> None:
    agent = app_agent.current()
    if agent is not None:
        agent.stop()
