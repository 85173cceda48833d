"""The Django app: registers the tasks, and starts the agent in a serving process."""

from __future__ import annotations

from django.apps import AppConfig


class RpcctlConfig(AppConfig):  # type: ignore[misc]  # Django ships no type information
    name = "app_agent.contrib.django"
    label = "rpcctl"
    verbose_name = "rpcctl agent"

    def ready(self) -> None:
        from app_agent.contrib.django import _start, checks, tasks

        tasks.register()
        checks.register_health_checks()
        _start.autostart()
