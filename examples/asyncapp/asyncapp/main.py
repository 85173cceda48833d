"""The FastAPI app: ``uvicorn asyncapp.main:app``.

The agent starts in the lifespan, inside uvicorn's running event loop, so the app's
``async def`` tasks run on that loop and can use what lives there (here: a counter behind
an ``asyncio.Lock``, standing in for an async database pool).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import app_agent


class State:
    """Loop-bound state: an asyncio.Lock may only be used on the loop that uses it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.visits = 0
        self.loop = asyncio.get_running_loop()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.shared = State()
    app_agent.set_ready(False)
    agent = app_agent.start(
        node=os.environ.get("RPCCTL_NODE", "unix:run/asyncapp.sock"),
        tasks=["asyncapp.tasks"],
        app="asyncapp",
    )
    app_agent.set_ready(True)  # the app serves from here on
    try:
        yield
    finally:
        app_agent.set_ready(False)
        agent.stop()


app = FastAPI(lifespan=lifespan)


@app.get("/visit")
async def visit() -> dict[str, int]:
    shared: State = app.state.shared
    async with shared.lock:
        shared.visits += 1
        return {"visits": shared.visits}
