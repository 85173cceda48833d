"""What the small test apps share: start the agent, say READY, serve until SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading

import app_agent


def serve(app: str) -> None:
    """Start this process's agent as *app* (node from RPCCTL_NODE), print ``READY <node>``,
    serve until SIGTERM, then stop the agent and exit 0."""
    app_agent.configure_logging(json=True)
    agent = app_agent.start(app=app)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"READY {agent.node}", flush=True)
    stop.wait()
    agent.stop()
    sys.exit(0)
