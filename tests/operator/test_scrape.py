"""The scrape metrics source against real /metrics endpoints (prometheus_client on loopback)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import aiohttp.web
import prometheus_client
import pytest

from tandem.policy.autoscaling import Phase
from tandem_operator.autoscale.exposition import delta, histogram_quantile
from tandem_operator.autoscale.metrics import MetricsUnavailable, PoolRef
from tandem_operator.autoscale.scrape import ScrapeSource
from tests.operator.cluster import NAMESPACE, PODS

POOL = PoolRef(NAMESPACE, "llama", "default", Phase.DECODE)


class Worker:
    """One worker's metrics with the contract's names, served on a loopback port."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        r = self.registry
        self.queued = prometheus_client.Gauge("tandem_queue_requests", "", ["phase"], registry=r)
        self.prompt = prometheus_client.Gauge("tandem_queue_prompt_tokens", "", ["phase"], registry=r)
        self.running = prometheus_client.Gauge("tandem_running_requests", "", ["phase"], registry=r)
        self.used = prometheus_client.Gauge("tandem_kv_blocks_used", "", registry=r)
        self.total = prometheus_client.Gauge("tandem_kv_blocks_total", "", registry=r)
        self.prefilled = prometheus_client.Counter("tandem_prefill_tokens", "", registry=r)
        self.itl = prometheus_client.Histogram("tandem_itl_seconds", "", registry=r,
                                               buckets=(0.01, 0.02, 0.05, 0.1, 0.2))

    async def metrics(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=prometheus_client.generate_latest(self.registry),
                                    content_type="text/plain")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def workers() -> AsyncIterator[list[tuple[Worker, int]]]:
    """Two workers, each on its own port."""
    runners, served = [], []
    for _ in range(2):
        worker = Worker()
        app = aiohttp.web.Application()
        app.router.add_get("/metrics", worker.metrics)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        served.append((worker, site._server.sockets[0].getsockname()[1]))
    yield served
    for runner in runners:
        await runner.cleanup()


def _pod(k8s, name: str, port: int, is_ready: bool = True) -> None:
    k8s.objects[PODS, NAMESPACE, name] = {
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}",
                     "labels": POOL.labels()},
        "spec": {"containers": [{"name": "decode", "ports": [
            {"name": "grpc", "containerPort": 1}, {"name": "metrics", "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1",
                   "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}]}}


async def test_sums_gauges_and_turns_counters_into_rates(k8s, kube, workers):
    (first, first_port), (second, second_port) = workers
    _pod(k8s, "decode-a", first_port)
    _pod(k8s, "decode-b", second_port)
    _pod(k8s, "decode-starting", 1, is_ready=False)  # not scraped (its port would refuse)
    for worker, running in ((first, 10), (second, 6)):
        worker.running.labels("decode").set(running)
        worker.queued.labels("decode").set(2)
        worker.running.labels("prefill").set(50)  # another phase: not this pool's load
        worker.used.set(300)
        worker.total.set(1000)
        worker.prefilled.inc(5000)
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        source = ScrapeSource(kube, http, clock=clock)
        first_load = await source.read_load(POOL)
        assert (first_load.num_running_seqs, first_load.num_waiting_seqs) == (16, 4)
        assert first_load.kv_usage == pytest.approx(0.3)
        assert first_load.prefill_tokens_per_s == 0  # no rate from a single scrape
        assert first_load.itl_p90_s is None

        clock.now += 10
        first.prefilled.inc(2000)
        second.prefilled.inc(1000)
        for seconds in [0.015] * 80 + [0.15] * 20:  # 20 % of the gaps are slow
            first.itl.observe(seconds)
        load = await source.read_load(POOL)
    assert load.prefill_tokens_per_s == pytest.approx(300.0)
    assert 0.1 < load.itl_p90_s <= 0.2  # the P90 falls in the slow bucket


async def test_a_pod_that_does_not_answer_makes_the_load_unknown(k8s, kube, workers):
    (worker, port), _ = workers
    _pod(k8s, "decode-a", port)
    _pod(k8s, "decode-gone", 9)  # nothing listens on port 9
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MetricsUnavailable, match="decode-gone"):
            await ScrapeSource(kube, http, timeout_s=2).read_load(POOL)


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.1: 50.0, 0.2: 80.0, 0.4: 100.0, math.inf: 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.65, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.9, buckets) == pytest.approx(0.3)
    assert histogram_quantile(0.9, {0.1: 0.0, math.inf: 0.0}) is None
    assert histogram_quantile(0.99, {0.1: 10.0, math.inf: 20.0}) == pytest.approx(0.1)


def test_a_counter_reset_counts_from_zero():
    assert delta(150.0, 100.0) == 50.0
    assert delta(30.0, 100.0) == 30.0  # the worker restarted
    assert delta(30.0, None) == 0.0
