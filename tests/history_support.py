"""Helpers shared by test_history_store.py, test_history_faults.py, test_history_postgres.py."""

from __future__ import annotations

import time
from typing import Any

from app_agent._jobs.history import HistoryStore, Record

APP = "myapp"


NODE = "unix:/run/myapp/agent.sock"


def record(job: str, started: float | None = None, **fields: Any) -> Record:
    values: dict[str, Any] = {
        "job": job,
        "task": "myapp.tasks.migrate",
        "caller": "uid=1000 pid=4242",
        "identity": None,
        "started": time.time() if started is None else started,
        "duration": 0.25,
        "state": "succeeded",
        "exit_code": 0,
        "error": None,
        "argument_sizes": {"revision": 6},
    }
    values.update(fields)
    return Record(**values)


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


def writes_counted(store: HistoryStore) -> list[int]:
    """Counts the store's attempts to write (the real database's method, wrapped)."""
    attempts: list[int] = []
    real = store._database.write

    def counted(rows: list[dict[str, Any]], prune: Any) -> None:
        attempts.append(len(rows))
        real(rows, prune)

    store._database.write = counted  # type: ignore[method-assign]
    return attempts
