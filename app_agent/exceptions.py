"""Errors the embedded agent raises inside the host application."""

from __future__ import annotations


class AgentError(Exception):
    """Base class: something about the agent itself went wrong."""


class AgentAlreadyRunning(AgentError):
    """``app_agent.start()`` was called while this process already runs an agent."""


class AddressInUse(AgentError):
    """Another live agent already listens on the requested address."""


class ConfigurationError(AgentError):
    """No usable node address, or an address the agent refuses to bind."""


class TaskRegistrationError(AgentError):
    """A task cannot be registered (bad target, alias taken) or its module cannot be imported."""


class StartRefused(AgentError):
    """This process must not start an agent (``rpcctl eval`` imports task modules in a
    process of its own, where an import that starts the app is a mistake to name)."""
