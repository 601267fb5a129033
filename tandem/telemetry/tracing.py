"""OpenTelemetry tracing: setup from the standard OTEL_* variables, W3C context in gRPC metadata, spans.

Exporters (`OTEL_TRACES_EXPORTER`, comma-separated): `otlp` (the default when
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; the exporter reads
the other OTEL_EXPORTER_OTLP_* variables itself), `console`, `none` (the default otherwise).
`TANDEM_TRACE_FILE=path` also appends every finished span to `path` as one JSON line, so that
local runs and tests can read one trace across processes. The service name comes from
`OTEL_SERVICE_NAME`, then `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, then the argument.

Context flows router -> prefill -> decode as the `traceparent`/`tracestate` gRPC metadata:

    call(request, metadata=inject_context([]))                      # client side
    with server_span("prefill.Prefill", context.invocation_metadata()):   # server side
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor,
                                            SpanExporter, SpanExportResult)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

TRACER_NAME = "tandem"
TRACE_FILE_ENV = "TANDEM_TRACE_FILE"
_EXPORTER_NAMES = ("none", "console", "otlp")
_PROPAGATOR = TraceContextTextMapPropagator()
# A proxy tracer: it follows whichever provider setup_tracing installs, so it is made once.
_TRACER = trace.get_tracer(TRACER_NAME)
_setup_lock = threading.Lock()
_provider: TracerProvider | None = None


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line (safe across processes)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Writes the spans; one locked append per batch so lines never interleave."""
        lines = "".join(json.dumps(span_to_dict(span), default=str) + "\n" for span in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                file.write(lines)
                file.flush()
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release: the file is opened per batch."""


def span_to_dict(span: ReadableSpan) -> dict:
    """A flat JSON-friendly view of a finished span (ids as lowercase hex)."""
    parent = span.parent
    return {
        "name": span.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None else None,
        "kind": span.kind.name,
        "service": span.resource.attributes.get(SERVICE_NAME),
        "start_time_unix_nano": span.start_time,
        "end_time_unix_nano": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": event.name, "attributes": dict(event.attributes or {})}
                   for event in span.events],
        "pid": os.getpid(),
    }


def build_tracer_provider(service_name: str) -> TracerProvider:
    """A TracerProvider with the resource and exporters that the environment asks for."""
    resource = Resource.create({SERVICE_NAME: service_name}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    for name in configured_exporters():
        if name == "console":
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace_file = os.environ.get(TRACE_FILE_ENV)
    if trace_file:
        # Synchronous export: the spans are on disk when the span ends, even if the process dies.
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(trace_file)))
    return provider


def setup_tracing(service_name: str) -> TracerProvider | None:
    """Installs the process-wide TracerProvider once (later calls return the first one).

    With no exporter configured nothing is installed: spans are then free no-ops that still
    carry the incoming trace context on to the next hop.
    """
    global _provider
    with _setup_lock:
        if _provider is None and (configured_exporters() or os.environ.get(TRACE_FILE_ENV)):
            _provider = build_tracer_provider(service_name)
            trace.set_tracer_provider(_provider)
        return _provider


def configured_exporters() -> list[str]:
    """The span exporters OTEL_TRACES_EXPORTER asks for (by default otlp when an endpoint is set)."""
    env = os.environ
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        has_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        return ["otlp"] if has_endpoint else []
    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in _EXPORTER_NAMES]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {unknown}; "
                         f"supported: {', '.join(_EXPORTER_NAMES)}")
    return [name for name in names if name != "none"]


def inject_context(metadata: Iterable[tuple[str, str]] | None = None,
                   context: Context | None = None) -> list[tuple[str, str]]:
    """gRPC metadata plus the W3C trace context (`traceparent`, `tracestate`) of `context` or the current span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return [*(metadata or ()), *carrier.items()]


def extract_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context carried by gRPC metadata (an empty context when there is none)."""
    carrier = {str(key).lower(): value for key, value in (metadata or ())
               if isinstance(value, str)}
    return _PROPAGATOR.extract(carrier)


def _attributes(attrs: dict) -> dict:
    # OpenTelemetry accepts str, bool, int, float (and sequences of them); show anything else as text.
    return {key: value if isinstance(value, (str, bool, int, float)) else str(value)
            for key, value in attrs.items() if value is not None}


@contextlib.contextmanager
def span(name: str, *, context: Context | None = None, kind: trace.SpanKind = trace.SpanKind.INTERNAL,
         tracer: trace.Tracer | None = None, **attrs) -> Iterator[trace.Span]:
    """Runs the block inside a new current span (a child of `context` or of the current span)."""
    tracer = tracer or _TRACER
    with tracer.start_as_current_span(name, context=context, kind=kind,
                                      attributes=_attributes(attrs)) as current:
        yield current


@contextlib.contextmanager
def server_span(name: str, metadata: Iterable[tuple[str, str | bytes]] | None, *,
                tracer: trace.Tracer | None = None, **attrs) -> Iterator[trace.Span]:
    """A SERVER span continuing the trace whose context arrived in gRPC metadata."""
    with span(name, context=extract_context(metadata), kind=trace.SpanKind.SERVER, tracer=tracer,
              **attrs) as current:
        yield current


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None outside a recording trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def start_server_span(name: str, metadata: Iterable[tuple[str, str | bytes]] | None,
                      **attrs) -> trace.Span:
    """A SERVER span continuing the incoming trace, started but not made current; end() it.

    For streaming handlers (async generators): a current span set inside a generator cannot be
    detached when the generator is closed from another context, so such handlers hold the span
    instead of entering it.
    """
    return _TRACER.start_span(name, context=extract_context(metadata), kind=trace.SpanKind.SERVER,
                              attributes=_attributes(attrs))

