"""Django integration: a live Django site answers ``rpcctl ping`` and runs its migrations.

Add ``"app_agent.contrib.django"`` to ``INSTALLED_APPS`` and set ``RPCCTL_NODE`` (in the
settings or the environment). When Django is ready in a *serving* process (gunicorn,
uvicorn, ``manage.py runserver``'s serving child, ...), the agent starts, and it stops at
exit; other management commands (``migrate``, ``shell``, ...) never start one. It registers
``django.migrate``, ``django.showmigrations``, ``django.check`` and ``django.call_command``.
See docs/django.md.

Importing this package does not import Django: Django imports it to find the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app_agent._agent import Agent

__all__ = ["start_agent"]


def start_agent() -> Agent:
    """Start the agent with the Django settings now (for servers the app cannot detect)."""
    from app_agent.contrib.django import _start

    return _start.start_agent()
