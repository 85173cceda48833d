"""How messages read on both sides: counts (``1 check``, ``2 checks``), shared hints."""

from __future__ import annotations

REGISTER_TASKS = (
    "mark functions with @task (from app_agent import task) and name their modules in "
    'app_agent.start(tasks=["myapp.tasks"])'
)
"""How an app registers tasks: said where an app turns out to have none."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """*count* and *noun*, plural unless *count* is 1 (*nouns*, else *noun* + "s")."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
