"""What every connection's service has, whatever methods it exposes: who is calling, the
access check every exposed method starts with, the audit, and what waits for the reply."""

from __future__ import annotations

import itertools
import math
import select
import time
from typing import TYPE_CHECKING, Any

import rpyc

from app_agent import wire
from app_agent._access import UNRESTRICTED, Identity
from app_agent._state import AgentState
from app_agent.config import DEFAULT_MAX_ARGUMENT_BYTES
from app_agent.wire import ErrorKind

if TYPE_CHECKING:
    from collections.abc import Callable

    from app_agent._console import Session
    from app_agent._jobs import Job

_FOLLOWER_KEYS = itertools.count(1)


class Hangup:
    """Whether a connection's client has gone (its side closed, even with bytes still unread:
    Linux's POLLRDHUP; elsewhere once the connection is fully gone), for what runs long on the
    connection's thread (profile, mem) and must end with its client. Without a descriptor
    (a service made in a test), the client never goes."""

    def __init__(self, fileno: int | None = None) -> None:
        self._poller: select.poll | None = None
        if fileno is not None:
            self._poller = select.poll()
            # Not POLLIN: a request the client sends meanwhile is no hang-up.
            events = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
            self._poller.register(fileno, events)

    def __call__(self) -> bool:
        return self._poller is not None and bool(self._poller.poll(0))

    def wait(self, seconds: float) -> bool:
        """Wait *seconds*: False as soon as the client hangs up, else True."""
        if self._poller is None:
            time.sleep(seconds)
            return True
        return not self._poller.poll(math.ceil(seconds * 1000))


class ServiceBase(rpyc.Service):  # type: ignore[misc]
    """One instance per connection: the caller, its identity and grants, the audit."""

    def __init__(
        self,
        state: AgentState,
        caller: str = "unknown",
        auth: str = "none",
        identity: Identity = UNRESTRICTED,
    ) -> None:
        self._state = state
        self._caller = caller
        self._auth = auth
        self._identity = identity
        # Who asked, on every audit line.
        self._who = {"caller": caller, "auth": auth, "identity": identity.name}
        self._after_reply: list[Callable[[], None]] = []
        # This connection as a follower of jobs (see Job.events_since), and the jobs it
        # follows, which stop waiting for it when it goes.
        self._follower = next(_FOLLOWER_KEYS)
        self._following: dict[str, Job] = {}
        self._console: Session | None = None  # this connection's console session, if open
        # Whether the client has gone (its side of the connection closed), for what runs
        # long on this connection's thread; the agent sets it to look at the socket.
        self.peer_gone = Hangup()

    @property
    def who(self) -> dict[str, Any]:
        """Who is calling, as every audit line names it: caller, auth, identity."""
        return dict(self._who)

    @property
    def _max_argument_bytes(self) -> int:
        config = self._state.config
        return config.max_argument_bytes if config is not None else DEFAULT_MAX_ARGUMENT_BYTES

    def run_after_reply(self) -> None:
        """Run what waits for the reply to have left (the audit line of a call): the
        connection's thread calls this after each request it served, so the line costs the
        caller nothing and stays in call order."""
        while self._after_reply:
            self._after_reply.pop(0)()

    def on_disconnect(self, conn: Any) -> None:
        for job in self._following.values():
            job.detach(self._follower)
        self._following.clear()
        if self._console is not None:
            self._console.close("connection closed")
            self._console = None

    # -- access control (app_agent/_access.py) ---------------------------------------------

    def _forbidden(self, grant: str, action: str) -> str | None:
        """The refusal to send when this connection's identity lacks *grant* (one of
        ``app_agent._access.GRANTS``), audited; None when it holds it. Every exposed method
        but ``ping`` starts with this check (``call``/``run`` check the task instead)::

            if (refused := self._forbidden(CONSOLE, "open a console")) is not None:
                return refused
        """
        if self._identity.may(grant):
            return None
        self._state.denials.note(f"no {grant} grant", grant=grant, action=action, **self._who)
        message = f"{self._identity} may not {action} (that needs the {grant} grant)"
        return wire.error(ErrorKind.AUTH, message)

    def _may_not_run(self, task: str, action: str = "", asked: str | None = None) -> str:
        """The refusal of a task this identity's patterns do not cover, audited. The reply
        names the task as *asked* (an alias stays an alias: which task it stands for is not
        the caller's to learn); the log names both."""
        shown = task if asked is None else asked
        fields = {"asked": asked} if asked is not None and asked != task else {}
        self._state.denials.note(
            "task not granted", task=task, action=action or "run", **fields, **self._who
        )
        message = f"{self._identity} may not run {shown}"
        return wire.error(ErrorKind.AUTH, f"{message} (asked to {action})" if action else message)

    def _audit(self, event: str, now: bool = False, **fields: Any) -> None:
        """Log who asked for what: at once, or (*now* False) once the reply has left."""
        log = self._state.log
        who = self._who
        if now:
            log.info(event, **who, **fields)
        else:
            self._after_reply.append(lambda: log.info(event, **who, **fields))
