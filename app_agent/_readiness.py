"""Readiness: whether the app says it can serve, as opposed to the agent merely answering.

Kubernetes asks both questions: liveness (``rpcctl ping``) and readiness (``rpcctl ping
--ready``). The flag is process-wide, so an app can set it before or after starting the
agent.
"""

from __future__ import annotations

ready = True


def set_ready(value: bool = True) -> None:
    """Declare whether the app can serve now; ``rpcctl ping --ready`` fails while False."""
    global ready
    ready = bool(value)
