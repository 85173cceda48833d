"""The Django settings the integration reads, each checked with a message naming it."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from app_agent.config import StartOptions, distribution_version
from app_agent.wire import environment

DEFAULT_COMMANDS = ("migrate", "showmigrations", "check")
"""``RPCCTL_DJANGO_COMMANDS`` when unset: the management commands callable remotely."""

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def node() -> str | None:
    """``RPCCTL_NODE`` from the settings, else from the environment."""
    value = getattr(settings, environment.NODE, None) or os.environ.get(environment.NODE)
    if value is not None and not isinstance(value, str):
        msg = f"{environment.NODE} must be a string such as 'unix:run/agent.sock', got {value!r}"
        raise ImproperlyConfigured(msg)
    return value or None


def commands() -> tuple[str, ...]:
    """``RPCCTL_DJANGO_COMMANDS``: the management commands remote callers may run."""
    value = getattr(settings, environment.DJANGO_COMMANDS, DEFAULT_COMMANDS)
    if isinstance(value, str) or not all(isinstance(c, str) for c in value):
        msg = f"{environment.DJANGO_COMMANDS} must be a list of command names, got {value!r}"
        raise ImproperlyConfigured(msg)
    return tuple(value)


def autostart() -> bool | None:
    """``RPCCTL_DJANGO_AUTOSTART`` (setting, else environment): True, False, or None for
    "start in serving processes only"."""
    value: Any = getattr(settings, environment.DJANGO_AUTOSTART, None)
    if value is None:
        value = os.environ.get(environment.DJANGO_AUTOSTART) or None
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE | {"auto"}:
        return None if text == "auto" else text in _TRUE
    msg = f"{environment.DJANGO_AUTOSTART} must be true, false or auto, got {value!r}"
    raise ImproperlyConfigured(msg)


def task_modules() -> list[str]:
    """``RPCCTL_TASKS``: the app's own modules with ``@task`` functions, imported at start."""
    value = getattr(settings, environment.TASKS, [])
    if isinstance(value, str) or not all(isinstance(m, str) for m in value):
        msg = f"{environment.TASKS} must be a list of module names, got {value!r}"
        raise ImproperlyConfigured(msg)
    return list(value)


def site_version() -> str | None:
    """The version of the installed distribution that provides the settings module's top
    package (``mysite`` for ``mysite.settings``); None when none does."""
    top = str(getattr(settings, "SETTINGS_MODULE", "") or "").partition(".")[0]
    return distribution_version([top]) if top else None


def start_options() -> StartOptions:
    """``RPCCTL_AGENT_OPTIONS``: keyword options of ``app_agent.start`` (locks, cookie_file,
    app, ...)."""
    value = getattr(settings, environment.AGENT_OPTIONS, {})
    allowed = StartOptions.__optional_keys__
    if not isinstance(value, dict) or set(value) - allowed:
        unknown = sorted(set(value) - allowed) if isinstance(value, dict) else value
        msg = (
            f"{environment.AGENT_OPTIONS} must be a dict with keys among {sorted(allowed)}; "
            f"not {unknown!r}"
        )
        raise ImproperlyConfigured(msg)
    options: StartOptions = {**value}  # type: ignore[typeddict-item]
    if options.get("version") is None and not os.environ.get(environment.APP_VERSION):
        # The site's own distribution, never Django's (whose tasks the agent registers).
        version = site_version()
        if version is not None:
            options["version"] = version
    if not options.get("app"):
        # The project's name (DJANGO_SETTINGS_MODULE "mysite.settings" -> "mysite").
        module = str(getattr(settings, "SETTINGS_MODULE", "") or "")
        options["app"] = os.environ.get(environment.APP) or module.partition(".")[0] or None
    return options
