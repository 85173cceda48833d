"""rpcctl: the operator's side. Connect to an app's agent, ping it, run its release tasks.

>>> import rpcctl
>>> with rpcctl.connect("unix:run/myapp.sock") as app:   # doctest: +SKIP
...     app.call("myapp.tasks.migrate", revision="head")
"""

from __future__ import annotations

from app_agent import __version__
from rpcctl._transport import Security
from rpcctl.client import Client, connect
from rpcctl.exceptions import (
    AuthenticationFailed,
    BadExpression,
    Busy,
    CallTimeout,
    ConfigError,
    NoSuchTask,
    NotReady,
    RpcctlError,
    TaskFailed,
    Unhealthy,
    Unreachable,
    UsageError,
)
from rpcctl.waits import ping, wait_for

TYPE_CHECKING = False
if TYPE_CHECKING:
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
    "NotReady",
    "RpcctlError",
    "Security",
    "TaskFailed",
    "Unhealthy",
    "Unreachable",
    "UsageError",
    "__version__",
    "connect",
    "multicall",
    "ping",
    "wait_for",
]


def __getattr__(name: str) -> object:
    # Loaded on first use: the fleet module brings concurrent.futures, which the probes'
    # `rpcctl ping` does not need.
    if name in ("multicall", "MulticallResult"):
        from rpcctl import fleet

        return getattr(fleet, name)
    msg = f"module 'rpcctl' has no attribute {name!r}"
    raise AttributeError(msg)
