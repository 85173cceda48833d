"""rpcctl: the operator's side. Connect to an app's agent, ping it, run its release tasks.

>>> import rpcctl
>>> with rpcctl.connect("unix:run/myapp.sock") as app:   # doctest: +SKIP
...     app.call("myapp.tasks.migrate", revision="head")
"""

from __future__ import annotations

from app_agent._version import __version__
from rpcctl.client import Client, connect, ping, wait_for
from rpcctl.exceptions import (
    AuthenticationFailed,
    BadExpression,
    Busy,
    CallTimeout,
    ConfigError,
    NoSuchTask,
    RpcctlError,
    TaskFailed,
    Unreachable,
    UsageError,
)
from rpcctl.fleet import MulticallResult, multicall

__all__ = [
    "AuthenticationFailed",
    "BadExpression",
    "Busy",
    "CallTimeout",
    "Client",
    "ConfigError",
    "MulticallResult",
    "NoSuchTask",
    "RpcctlError",
    "TaskFailed",
    "Unreachable",
    "UsageError",
    "__version__",
    "connect",
    "multicall",
    "ping",
    "wait_for",
]
