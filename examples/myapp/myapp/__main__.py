"""``python -m myapp``: serve HTTP with the rpcctl agent embedded, until SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import threading

import structlog

import app_agent
from myapp import web


def main() -> None:
    app_agent.configure_logging()
    log = structlog.get_logger("myapp")
    server = web.make_server()
    # RPCCTL_NODE comes from `rpcctl start` or the environment; this default suits a
    # checkout: a socket under ./run, which the agent creates owner-only.
    agent = app_agent.start(
        node=os.environ.get("RPCCTL_NODE", "unix:run/myapp.sock"),
        tasks=["myapp.tasks"],
        app="myapp",
    )
    # On SIGTERM (`bin/myapp stop`, systemd, Kubernetes) stop serving and stop the agent:
    # Python's default is to die at once, and the agent's socket would stay behind.
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    serving = threading.Thread(target=server.serve_forever, name="myapp-http", daemon=True)
    serving.start()
    log.info("myapp.started", http=web.url(), node=agent.node, pid=os.getpid())
    stopping.wait()
    log.info("myapp.stopping")
    server.shutdown()
    agent.stop()
    log.info("myapp.stopped")


if __name__ == "__main__":
    main()
