"""Prometheus metrics: every contract name is exposed with its labels, over HTTP too."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tandem.telemetry.metrics import CONTRACT_NAMES, Metrics, start_metrics_server


def record_one_of_each(metrics: Metrics) -> None:
    for phase in ("prefill", "decode"):
        metrics.queue_requests.labels(phase=phase, worker=f"{phase}-0", model="small").set(3)
        metrics.queue_prompt_tokens.labels(phase=phase, worker=f"{phase}-0", model="small").set(512)
        metrics.running_requests.labels(phase=phase, worker=f"{phase}-0", model="small").set(2)
    worker = {"worker": "decode-0", "model": "small"}
    metrics.kv_blocks_used.labels(**worker).set(10)
    metrics.kv_blocks_total.labels(**worker).set(100)
    metrics.prefill_tokens.labels(worker="prefill-0", model="small").inc(512)
    metrics.generated_tokens.labels(**worker).inc(64)
    metrics.ttft_seconds.labels(worker="prefill-0", model="small").observe(0.12)
    metrics.itl_seconds.labels(**worker).observe(0.02)
    metrics.kv_transfer_bytes.labels(worker="prefill-0", model="small").inc(4096)
    metrics.kv_transfer_seconds.labels(worker="prefill-0", model="small").observe(0.003)
    metrics.requests.labels(outcome="ok", model="small").inc()
    metrics.router_added_latency_seconds.labels(model="small").observe(0.001)
    metrics.dropped_errors.labels(component="router", kind="cancel_failed").inc()


def exposed(text: str) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_exposition_contains_every_contract_name_with_its_labels():
    metrics = Metrics.create()
    record_one_of_each(metrics)
    samples = exposed(metrics.exposition()[0].decode())
    for name in CONTRACT_NAMES:
        assert name in samples or f"{name}_bucket" in samples, name
    queue = {s.labels["phase"]: s.value for s in samples["tandem_queue_requests"]}
    assert queue == {"prefill": 3.0, "decode": 3.0}
    assert samples["tandem_prefill_tokens_total"][0].labels == {"worker": "prefill-0", "model": "small"}
    assert samples["tandem_prefill_tokens_total"][0].value == 512
    assert samples["tandem_requests_total"][0].labels == {"outcome": "ok", "model": "small"}
    buckets = {s.labels["le"]: s.value for s in samples["tandem_ttft_seconds_bucket"]}
    assert buckets["0.1"] == 0 and buckets["0.25"] == 1 and "60.0" in buckets
    assert min(float(le) for le in buckets if le != "+Inf") <= 0.001


def test_registries_are_per_instance_and_served_over_http():
    first, second = Metrics.create(), Metrics.create()
    first.requests.labels(outcome="ok", model="small").inc(2)
    assert "tandem_requests_total" not in exposed(second.exposition()[0].decode())
    port = start_metrics_server(0, host="127.0.0.1", metrics=first)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        samples = exposed(response.read().decode())
    assert samples["tandem_requests_total"][0].value == 2.0
