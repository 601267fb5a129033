"""The autoscaler's signals on real processes: what a router, a prefill worker and a decode worker
expose on /metrics, read by the operator's own reader (`tandem.policy.pool_load`)."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tandem.policy.autoscaling import Phase
from tandem.policy.pool_load import PoolLoadReader
from tandem.telemetry.exposition import Samples, parse_samples, sum_samples
from tests.integration.helpers import collect, greedy_request, router_stub

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(
        model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=512,
        prefill_args=["--metrics-port", str(_free_port())],
        decode_args=["--metrics-port", str(_free_port())])
    with LocalCluster(config, tmp_path_factory.mktemp("signals")) as running:
        yield running


def _scrape(port: int) -> Samples:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return parse_samples(reply.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _generated(cluster) -> float:
    samples = _scrape(cluster.decode[0].ready["metrics_port"])
    return sum_samples(samples, "tandem_generated_tokens_total", worker="decode-0")


def test_decode_counts_the_tokens_it_makes_and_the_router_latency_reaches_each_pool(cluster):
    ports = {"prefill": cluster.prefill[0].ready["metrics_port"],
             "decode": cluster.decode[0].ready["metrics_port"],
             "router": cluster.router.ready["metrics_port"]}
    readers = {phase: PoolLoadReader(phase) for phase in Phase}

    def read(phase: Phase):
        return readers[phase].read(time.monotonic(), {phase.value: _scrape(ports[phase.value])},
                                   {"router": _scrape(ports["router"])})

    for phase in Phase:
        read(phase)
    generated_before = _generated(cluster)
    stub = router_stub(cluster.grpc_address)
    expected = 0
    for seed in range(3):
        prompt = [(seed * 37 + i * 11) % 500 + 3 for i in range(20 + 15 * seed)]
        _, _, usage, routing = collect(stub.Generate(greedy_request(prompt, 12), timeout=120))
        made_by_prefill = 1 if routing and routing[-1].disaggregated else 0
        expected += usage.usage.completion_tokens - made_by_prefill
    assert expected > 0
    deadline = time.monotonic() + 30
    while _generated(cluster) - generated_before != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _generated(cluster) - generated_before == expected

    prefill, decode = read(Phase.PREFILL), read(Phase.DECODE)
    assert prefill.ttft_p90_s is not None and prefill.ttft_p90_s > 0
    assert prefill.prefill_tokens_per_s > 0
    assert decode.itl_p90_s is not None and decode.itl_p90_s > 0
    assert decode.num_kv_blocks_total > 0
