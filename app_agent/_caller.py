"""Who is calling, over which connection: the :class:`Caller` every handler is given.

One per connection, made by the agent when the handshake admits it: the identity and its
grants, the agent's state, the connection's own follower key, console session and hang-up
watch, and the audit lines that wait for the reply to leave. Handlers (the ``handlers``
module of each subpackage) read and use it; they inherit nothing."""

from __future__ import annotations

import itertools
import math
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app_agent import wire
from app_agent._server.access import UNRESTRICTED, Identity
from app_agent._state import AgentState
from app_agent.config import DEFAULT_MAX_ARGUMENT_BYTES
from app_agent.wire import ErrorKind, Reason

if TYPE_CHECKING:
    from app_agent._console.session import Session
    from app_agent._jobs.table import Job

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


class Caller:
    """One connection's caller: who it is, what it may do, and what it holds."""

    def __init__(
        self,
        state: AgentState,
        caller: str = "unknown",
        auth: str = "none",
        identity: Identity = UNRESTRICTED,
    ) -> None:
        self.state = state
        self.name = caller
        """Where the connection comes from (``uid=1000 pid=42``, ``10.0.0.5:41234``)."""
        self.auth = auth
        self.identity = identity
        # Who asked, on every audit line.
        self.who: dict[str, Any] = {"caller": caller, "auth": auth, "identity": identity.name}
        self.after_reply: list[Callable[[], None]] = []
        # This connection as a follower of jobs (see Job.events_since), and the jobs it
        # follows, which stop waiting for it when it goes.
        self.follower = next(_FOLLOWER_KEYS)
        self.following: dict[str, Job] = {}
        self.console: Session | None = None  # this connection's console session, if open
        # Whether the client has gone (its side of the connection closed), for what runs
        # long on this connection's thread; the agent sets it to look at the socket.
        self.peer_gone = Hangup()

    @property
    def max_argument_bytes(self) -> int:
        config = self.state.config
        return config.max_argument_bytes if config is not None else DEFAULT_MAX_ARGUMENT_BYTES

    def run_after_reply(self) -> None:
        """Run what waits for the reply to have left (the audit line of a call)."""
        while self.after_reply:
            self.after_reply.pop(0)()

    def disconnected(self) -> None:
        """The connection closed: stop holding jobs for it, end its console session."""
        for job in self.following.values():
            job.detach(self.follower)
        self.following.clear()
        if self.console is not None:
            self.console.close("connection closed")
            self.console = None

    def track(self, job: Job) -> int:
        """Remember that this connection reads *job*'s events (so that the job stops waiting
        for it when the connection goes); this connection's follower key."""
        for job_id, other in list(self.following.items()):
            if other is not job and not other.followed_by(self.follower):
                del self.following[job_id]  # it read that job's end (or was left behind)
        self.following[job.id] = job
        return self.follower

    # -- access control (app_agent/_server/access.py) ---------------------------------------------

    def forbidden(self, grant: str, action: str) -> str | None:
        """The refusal to send when this identity lacks *grant*, audited; None when it holds
        it. The service checks a method's grants from its table entry before its handler
        runs; handlers call this only for the rules that depend on what they find (a job's
        output: its task's patterns, or ``read``)."""
        if self.identity.may(grant):
            return None
        self.state.denials.note(f"no {grant} grant", grant=grant, action=action, **self.who)
        message = f"{self.identity} may not {action} (that needs the {grant} grant)"
        return wire.error(ErrorKind.AUTH, message, Reason.GRANT_MISSING, grant=grant, action=action)

    def may_not_run(self, task: str, action: str = "", asked: str | None = None) -> str:
        """The refusal of a task this identity's patterns do not cover, audited. The reply
        names the task as *asked* (an alias stays an alias: which task it stands for is not
        the caller's to learn); the log names both."""
        shown = task if asked is None else asked
        fields = {"asked": asked} if asked is not None and asked != task else {}
        self.state.denials.note(
            "task not granted", task=task, action=action or "run", **fields, **self.who
        )
        message = f"{self.identity} may not run {shown}"
        return wire.error(
            ErrorKind.AUTH,
            f"{message} (asked to {action})" if action else message,
            Reason.TASK_NOT_ALLOWED,
            task=shown,
        )

    def audit(self, event: str, now: bool = False, **fields: Any) -> None:
        """Log who asked for what: at once, or (*now* False) once the reply has left."""
        log = self.state.log
        who = self.who
        if now:
            log.info(event, **who, **fields)
        else:
            self.after_reply.append(lambda: log.info(event, **who, **fields))
