"""A job's span: a call that carries the caller's trace (a W3C ``traceparent``) runs inside a
span of the app's own OpenTelemetry tracer provider, a child of the caller's span, so the
task's database and HTTP spans nest under it and the whole call is one trace with the deploy
that made it.

Loaded only for a job that has a traceparent, and only then does it import
``opentelemetry`` (the API; the app's SDK, if it installed one, does the exporting). Without
opentelemetry-api the job runs as if no trace had come, and nothing is imported again. A
tracer provider that fails never fails the job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from app_agent._version import __version__

if TYPE_CHECKING:
    from app_agent._jobs.job import Job

SUCCEEDED = "succeeded"

_api: Any = None
"""``(trace, context, Status, propagator, tracer)`` once imported; False when opentelemetry-api is
missing (looked for once)."""


def _load() -> Any:
    global _api
    if _api is None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace import Status
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError:
            _api = False
        else:
            # Kept: before the app installs its provider this is a proxy that follows it.
            tracer = trace.get_tracer("app_agent", __version__)
            _api = (trace, context, Status, TraceContextTextMapPropagator(), tracer)
    return _api


@contextlib.contextmanager
def job_span(job: Job) -> Iterator[None]:
    """Run the body inside *job*'s span (named for its task; attributes ``rpcctl.job.id``,
    ``rpcctl.task``, ``rpcctl.caller``, ``rpcctl.identity`` (with an access file) and, at
    the end, ``rpcctl.outcome``; status ERROR unless it succeeded), the child of the span of
    its traceparent, current in the body's context (threads and the app's event loop)."""
    api: Any = _load() if job.traceparent is not None else False
    span = token = None
    if api:
        trace, context, _status, propagator, tracer = api
        try:
            parent = propagator.extract({"traceparent": job.traceparent})
            attributes = {"rpcctl.job.id": job.id, "rpcctl.task": job.task.name}
            attributes["rpcctl.caller"] = job.caller
            if job.audit.get("identity"):
                attributes["rpcctl.identity"] = job.audit["identity"]
            span = tracer.start_span(
                job.task.name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
            )
            token = context.attach(trace.set_span_in_context(span, parent))
        except Exception as exc:  # noqa: BLE001  (the app's tracer must never fail the job)
            _failed(job, exc)
            span = None
    try:
        yield
    finally:
        if span is not None:
            _end(span, job, api, token)


def _end(span: Any, job: Job, api: Any, token: Any) -> None:
    trace, context, status, _propagator, _tracer = api
    try:
        context.detach(token)
        span.set_attribute("rpcctl.outcome", job.state)
        if job.state != SUCCEEDED:
            error = job.error or {}
            kind = error.get("type") or error.get("kind") or job.state
            what = f"{kind}: {error.get('message', '')}"
            span.set_status(status(trace.StatusCode.ERROR, what.splitlines()[0][:500]))
        span.end()
    except Exception as exc:  # noqa: BLE001  (the app's tracer must never fail the job)
        _failed(job, exc)


def _failed(job: Job, exc: Exception) -> None:
    from app_agent.logs import get_logger

    get_logger().warning("tracing.failed", job=job.id, error=repr(exc)[:500])
