"""Every ``RPCCTL_*`` name, written once: the environment variables rpcctl reads or sets,
and the Django settings of ``app_agent.contrib.django``.

Both sides, the runner, the hooks, the launchers and the Django integration use these
names; docs/design.md lists what each means.
"""

from __future__ import annotations

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

NODE: Final = "RPCCTL_NODE"
"""The node address, on both sides, when none is given."""
COOKIE: Final = "RPCCTL_COOKIE"
COOKIE_FILE: Final = "RPCCTL_COOKIE_FILE"
TLS_CERT: Final = "RPCCTL_TLS_CERT"
"""The agent's certificate on tls:// (and the client's own, for mutual TLS)."""
TLS_KEY: Final = "RPCCTL_TLS_KEY"
TLS_CLIENT_CA: Final = "RPCCTL_TLS_CLIENT_CA"
"""The agent's CA for client certificates: set, they are required."""
TLS_CA: Final = "RPCCTL_TLS_CA"
"""The client's CA for the agent's certificate."""
ACCESS: Final = "RPCCTL_ACCESS"
"""The agent's access file: identities, their secrets and grants (docs/security.md)."""
IDENTITY: Final = "RPCCTL_IDENTITY"
"""The client's identity, proven with that identity's cookie."""
APP_VERSION: Final = "RPCCTL_APP_VERSION"
"""The app's version, reported by the agent in ``info`` and the handshake."""
LOCKS: Final = "RPCCTL_LOCKS"
"""Where task locks live (``memory``, ``file:DIR``, ``postgresql://...``): read by the agent
and by ``rpcctl eval``; the runner sets it for the app from ``[app] locks``."""
HISTORY: Final = "RPCCTL_HISTORY"
"""Where the agent keeps finished jobs: ``sqlite:PATH``, ``postgresql://...`` or ``off``
(default: a SQLite file beside a ``unix:`` socket, none on tcp://)."""
HISTORY_KEEP: Final = "RPCCTL_HISTORY_KEEP"
"""Finished jobs the history keeps per app, the newest (default 10,000)."""
HISTORY_DAYS: Final = "RPCCTL_HISTORY_DAYS"
"""Days the history keeps a finished job (default 30)."""
CONSOLE: Final = "RPCCTL_CONSOLE"
"""``1`` in the app's environment lets ``rpcctl remote`` open a console inside it."""
CONSOLE_LOG_STATEMENTS: Final = "RPCCTL_CONSOLE_LOG_STATEMENTS"
"""``1``: the audit log records each console statement's text (else only its size)."""
IDLE_TIMEOUT: Final = "RPCCTL_IDLE_TIMEOUT"
MAX_ARGUMENT_BYTES: Final = "RPCCTL_MAX_ARGUMENT_BYTES"
"""Bytes of arguments one request may carry (the agent's ``max_argument_bytes``)."""
LOG_LEVEL: Final = "RPCCTL_LOG_LEVEL"
HEALTH_LOOP_LAG: Final = "RPCCTL_HEALTH_LOOP_LAG"
"""Seconds of event-loop lag above which the built-in ``agent.event_loop`` check fails."""
APP: Final = "RPCCTL_APP"
"""The app's name: set by the runner for the app and its hooks, read by the agent."""
RUNNER_PID: Final = "RPCCTL_RUNNER_PID"
"""Set by ``rpcctl start`` for the app and its hooks: the runner's pid."""
APP_PID: Final = "RPCCTL_APP_PID"
"""Set by the runner for hooks while the app runs: its pid."""
ROOT: Final = "RPCCTL_ROOT"
"""Set by the runner for the app and its hooks: the release root (the config's directory)."""
HOOK: Final = "RPCCTL_HOOK"
"""Set by the runner for hooks: the event they run for (``post_start``...)."""
PROG: Final = "RPCCTL_PROG"
"""Set by a ``bin/NAME`` launcher to the name it was run as, so hints name that command."""
BIN: Final = "RPCCTL_BIN"
"""Read by a ``bin/NAME`` launcher: the rpcctl executable to run instead of its own."""
RPCCTL: Final = "RPCCTL"
"""For hooks: a command that reaches this app."""

# The Django settings of app_agent.contrib.django (NODE and DJANGO_AUTOSTART may also come
# from the environment).
DJANGO_COMMANDS: Final = "RPCCTL_DJANGO_COMMANDS"
"""The management commands remote callers may run."""
DJANGO_AUTOSTART: Final = "RPCCTL_DJANGO_AUTOSTART"
"""Whether the Django site starts its agent: true, false or auto (serving processes)."""
TASKS: Final = "RPCCTL_TASKS"
"""The site's own modules with ``@task`` functions, imported at start."""
AGENT_OPTIONS: Final = "RPCCTL_AGENT_OPTIONS"
"""Keyword options of ``app_agent.start`` for the Django site's agent."""
