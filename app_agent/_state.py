"""What every connection's service shares: the registry, the jobs, the app's identity.

Kept apart from the RPC service so that an agent that is only ever pinged (the handshake
answers pings) never imports RPyC: that happens with the first admitted connection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app_agent._jobs.locks import Backend
from app_agent._jobs.table import JobTable
from app_agent._registry import Registry
from app_agent._server.refusals import RateLimitedLog

if TYPE_CHECKING:
    from app_agent.config import AgentConfig


class AgentState:
    """What every connection's service shares: the registry, jobs, identity."""

    def __init__(
        self,
        registry: Registry,
        node: str,
        app: str,
        log: Any,
        locks: Backend,
        loop: Any = None,
        version: str | None = None,
    ) -> None:
        self.registry = registry
        self.node = node
        self.app = app
        self.version = version
        self.log = log
        self.jobs = JobTable(locks, loop)
        self.started_at = time.time()
        self.stop_handler: Callable[[], None] | None = None
        self.config: AgentConfig | None = None  # the agent's settings (the console's switch)
        # What a peer can cause at will is logged at a bounded rate, like the gate's refusals.
        self.denials = RateLimitedLog(log, "access.denied", "denied")
        self.malformed = RateLimitedLog(log, "connection.malformed", "malformed")

    def flush_logs(self) -> None:
        """Log the summaries still waiting (when the agent stops)."""
        self.denials.flush()
        self.malformed.flush()
