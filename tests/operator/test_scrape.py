"""The scrape metrics source against real /metrics endpoints on loopback.

Every pod serves the contract's own registry (`tandem.telemetry.metrics.Metrics`), labelled as
the workers and the router label it, so the series are the ones a cluster exposes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable

import aiohttp
import aiohttp.web
import pytest

from tandem.policy.autoscaling import Phase
from tandem.telemetry.exposition import delta, histogram_quantile
from tandem.telemetry.metrics import Metrics
from tandem_operator.autoscale.metrics import MetricsUnavailable, PoolRef
from tandem_operator.autoscale.scrape import ScrapeSource
from tandem_operator.naming import Role, selector_labels
from tests.operator.cluster import NAMESPACE, PODS

MODEL = "llama"
PREFILL = PoolRef(NAMESPACE, "llama", "default", Phase.PREFILL)
DECODE = PoolRef(NAMESPACE, "llama", "default", Phase.DECODE)
ROUTER_LABELS = selector_labels("llama", Role.ROUTER)


class Process:
    """One pod's process: the contract's metrics registry, served on a loopback port."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.metrics = Metrics.create()
        self.port = 0

    def phase(self, phase: str) -> dict[str, str]:
        """The labels worker_main puts on a worker's phase gauges."""
        return {"phase": phase, "worker": self.name, "model": MODEL}

    def worker(self) -> dict[str, str]:
        return {"worker": self.name, "model": MODEL}

    async def serve(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body, content_type = self.metrics.exposition()
        return aiohttp.web.Response(body=body, headers={"Content-Type": content_type})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def processes() -> AsyncIterator[Callable]:
    """Starts processes on their own ports; all stop at the end."""
    runners = []

    async def start(name: str) -> Process:
        process = Process(name)
        app = aiohttp.web.Application()
        app.router.add_get("/metrics", process.serve)
        runner = aiohttp.web.AppRunner(app)
        await runner.setup()
        site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        process.port = site._server.sockets[0].getsockname()[1]
        return process

    yield start
    for runner in runners:
        await runner.cleanup()


def _pod(k8s, name: str, port: int, labels: dict[str, str], is_ready: bool = True) -> None:
    k8s.objects[PODS, NAMESPACE, name] = {
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "labels": labels},
        "spec": {"containers": [{"name": "main", "ports": [
            {"name": "grpc", "containerPort": 1}, {"name": "metrics", "containerPort": port}]}]},
        "status": {"podIP": "127.0.0.1",
                   "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}]}}


async def test_sums_gauges_and_turns_counters_into_rates(k8s, kube, processes):
    first, second = await processes("decode-a"), await processes("decode-b")
    _pod(k8s, "decode-a", first.port, DECODE.labels())
    _pod(k8s, "decode-b", second.port, DECODE.labels())
    _pod(k8s, "decode-starting", 1, DECODE.labels(), is_ready=False)  # not scraped (port 1 refuses)
    for process, running in ((first, 10), (second, 6)):
        process.metrics.running_requests.labels(**process.phase("decode")).set(running)
        process.metrics.queue_requests.labels(**process.phase("decode")).set(2)
        process.metrics.running_requests.labels(**process.phase("prefill")).set(50)  # not decode load
        process.metrics.kv_blocks_used.labels(**process.worker()).set(300)
        process.metrics.kv_blocks_total.labels(**process.worker()).set(1000)
        process.metrics.prefill_tokens.labels(**process.worker()).inc(5000)
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        source = ScrapeSource(kube, http, clock=clock)
        first_load = await source.read_load(DECODE)
        assert (first_load.num_running_seqs, first_load.num_waiting_seqs) == (16, 4)
        assert first_load.kv_usage == pytest.approx(0.3)
        assert first_load.prefill_tokens_per_s == 0  # no rate from a single scrape

        clock.now += 10
        first.metrics.prefill_tokens.labels(**first.worker()).inc(2000)
        second.metrics.prefill_tokens.labels(**second.worker()).inc(1000)
        load = await source.read_load(DECODE)
    assert load.prefill_tokens_per_s == pytest.approx(300.0)


async def test_two_pools_read_in_turn_from_one_source_each_keep_their_rates(k8s, kube, processes):
    # The operator reads every pool of a TandemDeployment from one source, one pool after the
    # other, every tick: one pool's read must not forget what the other pool scraped last time.
    prefill, decode = await processes("prefill-0"), await processes("decode-0")
    _pod(k8s, "prefill-0", prefill.port, PREFILL.labels())
    _pod(k8s, "decode-0", decode.port, DECODE.labels())
    clock = Clock()
    rates = []
    async with aiohttp.ClientSession() as http:
        source = ScrapeSource(kube, http, clock=clock)
        for _ in range(4):  # steady load: 20,000 prompt tokens per 10 s tick
            prefill.metrics.prefill_tokens.labels(**prefill.worker()).inc(20_000)
            decode.metrics.running_requests.labels(**decode.phase("decode")).set(12)
            rates.append((await source.read_load(PREFILL)).prefill_tokens_per_s)
            assert (await source.read_load(DECODE)).num_running_seqs == 12
            clock.now += 10
    assert rates[0] == 0  # the first scrape of a pod gives no rate
    assert rates[1:] == [pytest.approx(2000.0)] * 3


async def test_latencies_come_from_the_router_ttft_to_prefill_and_itl_to_decode(k8s, kube, processes):
    prefill, decode = await processes("prefill-0"), await processes("decode-0")
    router = await processes("router-a")
    _pod(k8s, "prefill-0", prefill.port, PREFILL.labels())
    _pod(k8s, "decode-0", decode.port, DECODE.labels())
    _pod(k8s, "router-a", router.port, ROUTER_LABELS)
    for worker in (prefill, decode):  # as worker_main publishes them: labelled with the model
        worker.metrics.kv_blocks_total.labels(**worker.worker()).set(1000)
    ttft = router.metrics.ttft_seconds.labels(worker="router", model=MODEL)
    itl = router.metrics.itl_seconds.labels(worker="router", model=MODEL)
    other_ttft = router.metrics.ttft_seconds.labels(worker="router", model="another-tier")
    ttft.observe(0.05)  # before the first scrape: not part of any interval
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        source = ScrapeSource(kube, http, clock=clock)
        first_prefill, first_decode = await source.read_load(PREFILL), await source.read_load(DECODE)
        assert first_prefill.ttft_p90_s is None and first_decode.itl_p90_s is None

        clock.now += 15
        for seconds in [0.2] * 70 + [4.0] * 30:  # 30 % of first tokens are slow
            ttft.observe(seconds)
        for seconds in [0.015] * 85 + [0.15] * 15:  # 15 % of the gaps are slow
            itl.observe(seconds)
        for _ in range(1000):
            other_ttft.observe(30.0)  # another tier's model: its pools' latency, not these
        prefill_load, decode_load = await source.read_load(PREFILL), await source.read_load(DECODE)

        clock.now += 15  # nothing new: no latency for the interval
        quiet = await source.read_load(PREFILL)
    assert 2.5 < prefill_load.ttft_p90_s <= 5.0  # the P90 falls in the slow bucket
    assert 0.1 < decode_load.itl_p90_s <= 0.15
    assert quiet.ttft_p90_s is None


async def test_latency_of_a_model_the_router_first_serves_between_two_scrapes_counts(k8s, kube,
                                                                                      processes):
    # The router creates a model's series with its first request: those first tokens count.
    prefill, router = await processes("prefill-0"), await processes("router-a")
    _pod(k8s, "prefill-0", prefill.port, PREFILL.labels())
    _pod(k8s, "router-a", router.port, ROUTER_LABELS)
    prefill.metrics.kv_blocks_total.labels(**prefill.worker()).set(1000)
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        source = ScrapeSource(kube, http, clock=clock)
        assert (await source.read_load(PREFILL)).ttft_p90_s is None
        clock.now += 15
        router.metrics.ttft_seconds.labels(worker="router", model=MODEL).observe(3.0)
        load = await source.read_load(PREFILL)
    assert 2.5 < load.ttft_p90_s <= 5.0


async def test_a_pod_that_does_not_answer_makes_the_load_unknown(k8s, kube, processes):
    process = await processes("decode-a")
    _pod(k8s, "decode-a", process.port, DECODE.labels())
    _pod(k8s, "decode-gone", 9, DECODE.labels())  # nothing listens on port 9
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MetricsUnavailable, match="decode-gone"):
            await ScrapeSource(kube, http, timeout_s=2).read_load(DECODE)


async def test_a_router_that_does_not_answer_makes_the_load_unknown(k8s, kube, processes):
    process = await processes("decode-a")
    _pod(k8s, "decode-a", process.port, DECODE.labels())
    _pod(k8s, "router-gone", 9, ROUTER_LABELS)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(MetricsUnavailable, match="router-gone"):
            await ScrapeSource(kube, http, timeout_s=2).read_load(DECODE)


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
