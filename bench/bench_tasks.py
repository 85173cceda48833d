"""Tasks the benchmark calls."""

from __future__ import annotations

from app_agent import task


@task
def noop() -> None:
    """Do nothing: the cost of a call is all rpcctl's."""
