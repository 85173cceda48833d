"""A host application for the tracing tests.

``TRACEAPP_PROVIDER=1``: the app installs the OpenTelemetry SDK's TracerProvider with an
in-memory exporter as its global provider (what an instrumented app does), and the task
``spans`` reads what was exported. ``TRACEAPP_HIDE_OTEL=1``: opentelemetry cannot be
imported at all (as if it were not installed). Prints ``READY <node>`` once its agent
listens and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

if os.environ.get("TRACEAPP_HIDE_OTEL"):

    class _Hidden:
        """A finder that makes opentelemetry look absent."""

        def find_spec(self, name: str, *_args: Any) -> None:
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, _Hidden())  # type: ignore[arg-type]

from serving import serve

from app_agent import task

_exporter: Any = None


@task
def work() -> str:
    """Open a span of the task's own (as a database driver's instrumentation would)."""
    from opentelemetry import trace

    with trace.get_tracer("traceapp").start_as_current_span("db.query"):
        return "done"


@task
async def async_work() -> str:
    """The same from a coroutine."""
    from opentelemetry import trace

    await asyncio.sleep(0)
    with trace.get_tracer("traceapp").start_as_current_span("db.async_query"):
        return "done"


@task
def plain() -> str:
    """Touch no tracing at all."""
    return "plain"


@task
def fail() -> None:
    """Raise ValueError."""
    raise ValueError("bad row\nsecond line")


@task
def spans(count: int) -> list[dict[str, Any]]:
    """The finished spans, once there are COUNT (or after 10 s): name, ids, kind, status."""
    deadline = time.monotonic() + 10
    while len(_exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    found = []
    for span in _exporter.get_finished_spans():
        context, parent = span.get_span_context(), span.parent
        found.append(
            {
                "name": span.name,
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent else None,
                "remote_parent": bool(parent and parent.is_remote),
                "kind": span.kind.name,
                "status": span.status.status_code.name,
                "description": span.status.description,
                "attributes": dict(span.attributes or {}),
            }
        )
    return found


@task
def otel_modules() -> list[str]:
    """The opentelemetry modules this process has imported."""
    return sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")


def main() -> None:
    global _exporter
    if os.environ.get("TRACEAPP_PROVIDER"):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    serve("traceapp")


if __name__ == "__main__":
    main()
