"""asyncapp: a FastAPI service whose agent lives in its lifespan, on its own event loop."""
