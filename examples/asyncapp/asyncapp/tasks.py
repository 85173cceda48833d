"""Release tasks of asyncapp: async ones run on the app's own event loop."""

from __future__ import annotations

import asyncio
import threading

from app_agent import task
from asyncapp.main import State, app


@task
async def visits() -> dict[str, object]:
    """How many visits the app counted, read under the app's own asyncio.Lock."""
    shared: State = app.state.shared
    async with shared.lock:  # only works on the loop the lock belongs to
        return {
            "visits": shared.visits,
            "on_app_loop": asyncio.get_running_loop() is shared.loop,
        }


@task
async def reset_visits() -> int:
    """Reset the counter; returns what it was."""
    shared: State = app.state.shared
    async with shared.lock:
        before, shared.visits = shared.visits, 0
        return before


@task
def thread_name() -> str:
    """Sync tasks run on threads, never on the event loop."""
    return threading.current_thread().name
