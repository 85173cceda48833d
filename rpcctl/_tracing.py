"""The rpcctl command's side of tracing: the caller's trace goes with its calls.

A command run with ``TRACEPARENT`` in its environment (as CI systems and otel-cli set it)
sends that trace with every call and run it makes, so the job's span in the app is part of
it. With opentelemetry-sdk installed and ``OTEL_TRACES_EXPORTER`` set, the command exports a
span of its own (``rpcctl rpc``, kind CLIENT) in between: the job's span is then its child.
The SDK configures itself from the standard variables (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_*``,
``OTEL_BSP_*``); the exporters are the SDK's by name (its ``opentelemetry_traces_exporter``
entry points: ``console``, and ``otlp`` with opentelemetry-exporter-otlp). ``console``
writes to stderr, since stdout holds the command's result.

Nothing here imports opentelemetry unless ``OTEL_TRACES_EXPORTER`` asks for an exporter.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from app_agent.wire import tracecontext

EXPORTER_ENV = "OTEL_TRACES_EXPORTER"
_ENTRY_POINTS = "opentelemetry_traces_exporter"

_outgoing: str | None = None
"""The trace the running command's calls carry (see :func:`outgoing`)."""
_span: Any = None


def outgoing() -> str | None:
    """The traceparent the calls of the running rpcctl command carry: its own span's, or
    the valid ``TRACEPARENT`` it was given; None outside a command (the Python API passes
    ``traceparent=`` itself)."""
    return _outgoing


def name_command(name: str) -> None:
    """Name the command's span after the command (``rpcctl rpc``), once click knows it."""
    if _span is not None:
        _span.update_name(f"rpcctl {name}")
        _span.set_attribute("rpcctl.command", name)


@contextlib.contextmanager
def command(warn: Callable[[str], None], environ: Mapping[str, str] = os.environ) -> Iterator[None]:
    """Around one rpcctl command: its calls carry its trace; with an exporter, its span is
    exported when it ends (status ERROR when it exits non-zero). *warn* gets a line for an
    exporter that cannot be used (the command goes on without it)."""
    global _outgoing, _span
    incoming = tracecontext.parse(environ.get(tracecontext.TRACEPARENT_ENV))
    provider = _provider(environ.get(EXPORTER_ENV, ""), warn)
    if provider is None:
        _outgoing = incoming
        try:
            yield
        finally:
            _outgoing = None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    parent = propagator.extract({"traceparent": incoming}) if incoming else None
    tracer = provider.get_tracer("rpcctl")
    span = tracer.start_span("rpcctl", context=parent, kind=trace.SpanKind.CLIENT)
    carrier: dict[str, str] = {}
    propagator.inject(carrier, context=trace.set_span_in_context(span))
    _outgoing, _span = carrier.get("traceparent"), span
    code: object = 0
    try:
        yield
    except SystemExit as exc:
        code = exc.code
        raise
    except BaseException:
        code = 1
        raise
    finally:
        if code not in (0, None):
            span.set_attribute("rpcctl.exit_code", code if isinstance(code, int) else 1)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"exit {code}"))
        span.end()
        provider.shutdown()  # exports what is pending
        _outgoing = _span = None


def _provider(names: str, warn: Callable[[str], None]) -> Any:
    """A TracerProvider exporting to the exporters *names* (comma-separated), configured
    from the environment by the SDK; None without the SDK or without a usable exporter."""
    wanted = [n.strip() for n in names.split(",") if n.strip() and n.strip().lower() != "none"]
    if not wanted:
        return None
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        return None  # opentelemetry-sdk is not installed: the trace still goes with the calls
    from importlib.metadata import entry_points

    exporters = []
    for name in wanted:
        found = entry_points(group=_ENTRY_POINTS, name=name)
        if not found:
            warn(f"{EXPORTER_ENV}: no trace exporter named {name!r} is installed; not exported")
            continue
        try:
            cls = next(iter(found)).load()
            exporters.append(cls(out=sys.stderr) if name == "console" else cls())
        except Exception as exc:  # noqa: BLE001  (a broken exporter must not stop the command)
            warn(f"{EXPORTER_ENV}: the {name!r} exporter failed to start: {exc}; not exported")
    if not exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "rpcctl"}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
