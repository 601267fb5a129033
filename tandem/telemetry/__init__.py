"""Shared telemetry: Prometheus metrics with the contract names, OpenTelemetry tracing helpers."""

from tandem.telemetry.metrics import Metrics, default_metrics, start_metrics_server
from tandem.telemetry.tracing import (current_trace_id, extract_context, inject_context, server_span,
                                      setup_tracing, span)

__all__ = [
    "Metrics", "default_metrics", "start_metrics_server", "current_trace_id", "extract_context",
    "inject_context", "server_span", "setup_tracing", "span",
]
