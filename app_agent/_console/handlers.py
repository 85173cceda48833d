"""Handlers of the remote console's methods (the session: app_agent/_console/session.py): off
unless the app turns it on, granted by name (``console``, never implied by ``*``), one
session per connection.

The console's module loads on first use, like introspection's.
"""

from __future__ import annotations

from app_agent._caller import Caller


def console_open(caller: Caller) -> str:
    """Open this connection's console session (refused, exit 5, unless enabled)."""
    from app_agent._console import session as _console

    reply, caller.console = _console.open_session(
        caller.state, caller.name, caller.auth, caller.console, caller.identity.name
    )
    return reply


def console_push(caller: Caller, source: str, wait: float) -> str:
    """Run *source* (complete statements) in the session; its first output."""
    from app_agent._console import session as _console

    return _console.push(caller.console, source, wait)


def console_poll(caller: Caller, cursor: int, wait: float) -> str:
    """The running statement's output from *cursor* on, waiting up to *wait* s."""
    from app_agent._console import session as _console

    return _console.poll(caller.console, cursor, wait)


def console_interrupt(caller: Caller) -> str:
    """Raise KeyboardInterrupt in the running statement, where possible."""
    from app_agent._console import session as _console

    return _console.interrupt(caller.console)


def console_close(caller: Caller) -> str:
    """End the session (as the connection's end does)."""
    from app_agent._console import session as _console

    reply = _console.close(caller.console, "closed by the client")
    caller.console = None
    return reply
