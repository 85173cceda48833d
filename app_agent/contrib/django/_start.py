"""Starting the agent from Django's ``AppConfig.ready()``, and stopping it at exit."""

from __future__ import annotations

import atexit
import errno
import os
import sys

from django.core.exceptions import ImproperlyConfigured

import app_agent
from app_agent._agent import Agent
from app_agent.contrib.django import _serving, _settings
from app_agent.exceptions import AddressInUse, ConfigurationError, TaskRegistrationError
from app_agent.logs import get_logger
from app_agent.wire import environment


def autostart() -> Agent | None:
    """Start the agent if this process serves the site (or ``RPCCTL_DJANGO_AUTOSTART`` says
    so); None when it does not start here."""
    wanted = _settings.autostart()
    if wanted is None:
        wanted = _serving.is_serving(sys.argv, os.environ)
    if not wanted:
        return None
    running = app_agent.current()
    if running is not None:  # started by a server hook, or Django set up twice
        return running
    log = get_logger()
    if _settings.node() is None:
        log.warning(
            "agent.not_started",
            reason=f"no node address: set {environment.NODE} in the settings or the environment",
        )
        return None
    try:
        return start_agent()
    except (AddressInUse, OSError) as exc:
        # Another process of the same server holds the node, e.g. a sibling worker when the
        # app is loaded per worker (preload_app = True puts the agent once in the arbiter);
        # OSError: the sibling won the race for the socket between the check and the bind.
        if not isinstance(exc, AddressInUse) and exc.errno != errno.EADDRINUSE:
            raise
        log.warning("agent.not_started", reason=str(exc), pid=os.getpid())
        return None


def start_agent() -> Agent:
    """Start the agent with the settings; it stops when the process exits."""
    node = _settings.node()
    if node is None:
        msg = f"{environment.NODE} is not set (in the settings or the environment)"
        raise ImproperlyConfigured(msg)
    try:
        agent = app_agent.start(node, _settings.task_modules(), **_settings.start_options())
    except (ConfigurationError, TaskRegistrationError) as exc:
        raise ImproperlyConfigured(f"rpcctl agent: {exc}") from exc
    # A forked child inherits this handler with an abandoned agent, whose stop() does nothing.
    atexit.register(agent.stop)
    return agent
