"""The remote console's methods of the service: off unless the app turns it on, and
granted by name (``console``, never implied by ``*``)."""

from __future__ import annotations

from typing import Any

from app_agent._access import CONSOLE
from app_agent._service_base import ServiceBase


class ConsoleMethods(ServiceBase):
    """One console session per connection, inside the app (app_agent/_console.py)."""

    # -- the remote console (app_agent/_console.py): off unless the app turns it on ---------
    # Loaded on first use, like introspection; one session per connection.

    def exposed_console_open(self) -> str:
        """Open this connection's console session (refused, exit 5, unless enabled)."""
        if (refused := self._forbidden(CONSOLE, "use the console")) is not None:
            return refused
        from app_agent import _console

        reply, self._console = _console.open_session(
            self._state, self._caller, self._auth, self._console, self._identity.name
        )
        return reply

    def exposed_console_push(self, source: Any, wait: Any = 1.0) -> str:
        """Run *source* (complete statements) in the session; its first output."""
        if (refused := self._forbidden(CONSOLE, "use the console")) is not None:
            return refused
        from app_agent import _console

        return _console.push(self._console, source, wait)

    def exposed_console_poll(self, cursor: Any, wait: Any = 1.0) -> str:
        """The running statement's output from *cursor* on, waiting up to *wait* s."""
        if (refused := self._forbidden(CONSOLE, "use the console")) is not None:
            return refused
        from app_agent import _console

        return _console.poll(self._console, cursor, wait)

    def exposed_console_interrupt(self) -> str:
        """Raise KeyboardInterrupt in the running statement, where possible."""
        if (refused := self._forbidden(CONSOLE, "use the console")) is not None:
            return refused
        from app_agent import _console

        return _console.interrupt(self._console)

    def exposed_console_close(self) -> str:
        """End the session (as the connection's end does)."""
        if (refused := self._forbidden(CONSOLE, "use the console")) is not None:
            return refused
        from app_agent import _console

        reply = _console.close(self._console, "closed by the client")
        self._console = None
        return reply
