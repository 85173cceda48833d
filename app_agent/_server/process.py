"""Process control: stopping (or restarting) the app the agent lives in.

Kept apart from the RPC service, which only asks: ``exposed_stop`` calls
:func:`request_stop`, which decides whether the release runner, the app's own stop handler
or a signal does it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

from app_agent import wire


def request_stop(stop_handler: Callable[[], None] | None, restart: bool, log: Any) -> str:
    """Stop (or restart) the app gracefully; how it was asked: runner, handler or signal.

    Under ``rpcctl start`` the runner is asked, so its pre_stop and post_stop hooks run;
    otherwise the app's own stop handler runs, or the process gets SIGTERM. The runner
    named by RPCCTL_RUNNER_PID is signalled only when it is this process's parent: the
    variable may be inherited (an app started from a hook) or stale (its pid reused).
    """
    named = os.environ.get(wire.RUNNER_ENV, "")
    runner = int(named) if named.isdigit() else None
    if runner is not None and runner == os.getppid():
        os.kill(runner, signal.SIGHUP if restart else signal.SIGTERM)
        return "runner"
    not_ours = ""
    if runner is not None:
        not_ours = (
            f"{wire.RUNNER_ENV}={runner} is not this app's parent (pid {os.getppid()}), "
            "so it is not this app's runner"
        )
        log.warning(
            "stop.runner_ignored", runner_pid=runner, parent_pid=os.getppid(), reason=not_ours
        )
    if restart:
        msg = "restart needs the release runner"
        raise ValueError(f"{msg} ({not_ours})" if not_ours else msg)
    if stop_handler is not None:
        # On its own thread: the handler may stop the agent, this connection included.
        threading.Thread(target=stop_handler, name="rpcctl-stop", daemon=True).start()
        return "handler"
    os.kill(os.getpid(), signal.SIGTERM)
    return "signal"
