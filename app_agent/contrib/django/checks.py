"""Django's own checks as plain functions that raise on failure: for ``django.check`` now,
and as the site's health checks (``rpcctl health``; see docs/django.md)."""

from __future__ import annotations

from typing import Any

import app_agent
from app_agent.wire.words import plural

LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def run(deploy: bool = False) -> list[Any]:
    """Django's system check messages (as ``manage.py check``), silenced ones left out;
    raises SystemCheckError when any is an error."""
    from django.core import checks
    from django.core.management.base import SystemCheckError

    messages = [
        m for m in checks.run_checks(include_deployment_checks=deploy) if not m.is_silenced()
    ]
    serious = [m for m in messages if m.is_serious()]
    if serious:
        listed = "; ".join(str(m).replace("\n\t", " ") for m in serious)
        msg = f"System check identified {plural(len(serious), 'error')}: {listed}"
        raise SystemCheckError(msg)
    return messages


def describe(message: Any) -> dict[str, Any]:
    """One check message as plain data."""
    return {
        "id": message.id,
        "level": LEVELS.get(message.level, str(message.level)),
        "message": message.msg,
        "hint": message.hint,
        "obj": None if message.obj is None else str(message.obj),
    }


def system_checks() -> int:
    """Django's system checks at error level; returns how many warnings there are."""
    return len(run())


def database_check() -> list[str]:
    """Every configured database answers ``SELECT 1``; returns their aliases."""
    from django.db import connections

    try:
        for alias in connections:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
        return list(connections)
    finally:
        connections.close_all()  # this thread's connections: never left open by a check


def register_health_checks() -> bool:
    """Register both checks with ``app_agent.health_check`` (False where an older agent
    has no such feature)."""
    health_check = getattr(app_agent, "health_check", None)
    if health_check is None:
        return False
    health_check(name="django.system_checks")(system_checks)
    health_check(name="django.database")(database_check)
    return True
