"""What an error means to the operator: the one place that turns reason codes into words.

An error's ``reason`` (an :class:`app_agent.wire.Reason`) and ``data`` say why it happened;
its message is the sentence of whoever raised it. The hints below (what to type next, where
our cookie came from) are chosen by the reason alone, never by the message's text, so a
reworded message keeps its hint; they name the command the user typed (``bin/NAME`` through
a launcher).
"""

from __future__ import annotations

from app_agent.wire import Reason
from rpcctl.exceptions import RpcctlError

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NOT_RUNNING = frozenset(
    {Reason.NO_SOCKET, Reason.STALE_SOCKET, Reason.APP_GONE, Reason.CONNECTION_REFUSED}
)
"""Nothing serves at the address: the app is not running (``start`` starts it)."""
_COOKIE_REFUSED = frozenset({Reason.WRONG_COOKIE, Reason.AGENT_UNPROVEN})
"""Our cookie and the agent's do not match: say where ours came from."""


def explain(
    exc: RpcctlError,
    prog: str = "rpcctl",
    start: str | None = None,
    cookie_source: str = "",
    lock_wait: bool = False,
) -> str:
    """*exc*'s message with the hint its reason calls for. *prog* is the command the user
    typed; *start*, the command that starts the app when one is configured (None: no
    hint); *cookie_source*, where our cookie was read from; *lock_wait*, whether
    ``--lock-wait`` is an option of the command that found the lock busy."""
    return exc.message + hint(exc.reason, exc.data, prog, start, cookie_source, lock_wait)


def hint(
    reason: str | None,
    data: dict[str, Any],
    prog: str = "rpcctl",
    start: str | None = None,
    cookie_source: str = "",
    lock_wait: bool = False,
) -> str:
    """The words an error of *reason* (with *data*) ends with; "" when none fits."""
    job = data.get("job")
    if reason in _NOT_RUNNING and start is not None:
        return f"; start it with `{start} start`"
    if reason in _COOKIE_REFUSED and cookie_source:
        return f" (our cookie was read from {cookie_source})"
    if reason == Reason.LOCK_HELD and lock_wait:
        return "; to wait for it instead, add --lock-wait SECONDS"
    if reason == Reason.NO_SUCH_TASK:
        return f"; `{prog} tasks` lists the registered tasks"
    if reason == Reason.NO_SUCH_JOB:
        return f"; `{prog} jobs` lists recent jobs"
    if reason == Reason.NO_METHOD:
        return f" (see `{prog} info`)"
    if reason == Reason.NO_RUNNER:
        return f"; start the app with `{prog} start`"
    if reason == Reason.PROFILE_RUNNING and "id" in data:
        return f": `{prog} cancel {data['id']}` ends it"
    if reason == Reason.STILL_RUNNING and job is not None:
        return (
            f": follow it with `{prog} logs {job} --follow`, "
            f"or wait for it with `{prog} wait {job}`"
        )
    if reason == Reason.STILL_RUNNING:
        return f" (`{prog} jobs` lists it)"
    return ""
