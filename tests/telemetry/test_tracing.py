"""Tracing: W3C context through gRPC metadata, in one process and across two over real gRPC; exporters."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tandem.telemetry.tracing import (JsonLinesSpanExporter, configured_exporters, extract_context,
                                      inject_context, server_span, span)

PEER = pathlib.Path(__file__).with_name("trace_peer.py")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_context_injected_into_metadata_continues_the_trace_on_the_other_side(tmp_path):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    file_exporter = JsonLinesSpanExporter(tmp_path / "spans.jsonl")
    provider.add_span_processor(SimpleSpanProcessor(file_exporter))
    tracer = provider.get_tracer("test")

    with span("router.request", tracer=tracer, model="small", skipped=None) as parent:
        metadata = inject_context([("authorization", "Bearer k")])
    assert metadata[0] == ("authorization", "Bearer k")
    assert any(key == "traceparent" for key, _ in metadata)
    # The other side sees only the metadata (as grpc.aio hands it over).
    with server_span("prefill.Prefill", tuple(metadata), tracer=tracer) as child:
        with span("prefill.kv_transfer", tracer=tracer):
            pass

    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert child.get_span_context().trace_id == parent.get_span_context().trace_id
    assert spans["prefill.Prefill"].parent.span_id == parent.get_span_context().span_id
    assert spans["prefill.kv_transfer"].parent.span_id == child.get_span_context().span_id
    assert dict(spans["router.request"].attributes) == {"model": "small"}
    lines = [json.loads(line) for line in (tmp_path / "spans.jsonl").read_text().splitlines()]
    assert [line["name"] for line in lines] == ["router.request", "prefill.kv_transfer", "prefill.Prefill"]
    assert lines[2]["parent_span_id"] == lines[0]["span_id"] and lines[2]["kind"] == "SERVER"


def test_metadata_without_context_starts_a_new_trace():
    assert not extract_context([("x-other", "1")])
    assert inject_context() == []  # no current span: nothing to carry


def run_peers(tmp_path, worker_env: dict[str, str], router_env: dict[str, str]) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OTEL_TRACES_EXPORTER": "none",
           "TANDEM_TRACE_FILE": str(tmp_path / "trace.jsonl")}
    worker = subprocess.Popen([sys.executable, str(PEER), "worker"], env={**env, **worker_env},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = worker.stdout.readline().strip()
        assert port.isdigit(), "the worker did not start"
        router = subprocess.run([sys.executable, str(PEER), "router", port], env={**env, **router_env},
                                capture_output=True, text=True, timeout=60)
        assert router.returncode == 0, router.stderr
    finally:
        worker_out, _ = worker.communicate(input="", timeout=30)
    return router.stdout, worker_out


def test_trace_crosses_two_processes_over_grpc(tmp_path):
    _, worker_out = run_peers(tmp_path, {"OTEL_SERVICE_NAME": "prefill-7",
                                         "OTEL_TRACES_EXPORTER": "console"},
                              {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"})
    spans = {s["name"]: s for s in map(json.loads, (tmp_path / "trace.jsonl").read_text().splitlines())}
    router, worker, transfer = spans["router.request"], spans["worker.Call"], spans["worker.kv_transfer"]
    assert router["pid"] != worker["pid"]
    assert router["trace_id"] == worker["trace_id"] == transfer["trace_id"]
    assert worker["parent_span_id"] == router["span_id"] and router["parent_span_id"] is None
    assert transfer["parent_span_id"] == worker["span_id"]
    assert worker["service"] == "prefill-7" and router["service"] == "tandem-router"
    assert worker["attributes"] == {"payload": "hello"}
    assert '"worker.Call"' in worker_out  # the console exporter printed it too


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    async def Export(self, request, context):
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_otlp_exporter_sends_spans_to_the_configured_endpoint(tmp_path):
    collector, server = Collector(), grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        otlp = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"}
        await asyncio.to_thread(run_peers, tmp_path, {}, otlp)
    finally:
        await server.stop(0)
    names, resources = set(), []
    for request in collector.requests:
        for resource_spans in request.resource_spans:
            resources.append({a.key: a.value.string_value for a in resource_spans.resource.attributes})
            names |= {s.name for scope in resource_spans.scope_spans for s in scope.spans}
    assert names == {"router.request"}
    assert resources[0]["service.name"] == "tandem-router"
    assert resources[0]["deployment.environment"] == "test"


@pytest.mark.parametrize("env, expected", [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_TRACES_EXPORTER": "none"}, []),
    ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
])
def test_exporters_follow_the_otel_variables(monkeypatch, env, expected):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert configured_exporters() == expected


def test_unknown_exporter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="zipkin"):
        configured_exporters()
