"""Readiness: whether the app says it can serve, as opposed to the agent merely answering.

Kubernetes asks both questions: liveness (``rpcctl ping``) and readiness (``rpcctl ping
--ready``). The flag is process-wide, so an app can set it before or after starting the
agent. ``rpcctl drain`` holds it down whatever the app declares (:func:`set_drained`), and
``rpcctl resume`` gives the app's own answer back.
"""

from __future__ import annotations

ready = True
"""What ``ping --ready`` and ``info`` answer: the app's own flag, unless drained."""
_app_ready = True
_drained = False


def set_ready(value: bool = True) -> None:
    """Declare whether the app can serve now; ``rpcctl ping --ready`` fails while False."""
    global ready, _app_ready
    _app_ready = bool(value)
    ready = _app_ready and not _drained


def set_drained(value: bool) -> None:
    """Drained (``rpcctl drain``): not ready whatever the app declares, until resumed."""
    global ready, _drained
    _drained = bool(value)
    ready = _app_ready and not _drained
