"""The simulated autoscaler reads what the operator reads: scraped gauges, counter rates and the
router's latency histograms per interval, through the operator's own reader."""

from __future__ import annotations

import bisect

import pytest

from tandem.policy import autoscaling
from tandem.policy.autoscaling import Phase
from tandem.policy.pool_load import PoolLoadReader
from tandem.sim.config import AutoscaleMode, Design, SimConfig
from tandem.sim.engine import Simulator
from tandem.sim.pools import perf_for
from tandem.sim.simulate import simulate
from tandem.sim.telemetry import RouterTelemetry, machine_samples
from tandem.telemetry.exposition import parse_samples
from tandem.telemetry.metrics import LATENCY_BUCKETS_S, Metrics

from .conftest import make_trace


def _interpolated_p90(value: float, bounds) -> float:
    # histogram_quantile(0.9) of a single observation: 90 % of the way through its bucket.
    index = bisect.bisect_left(bounds, value)
    lower = bounds[index - 1] if index else 0.0
    return lower + 0.9 * (bounds[index] - lower)


def test_the_autoscaler_gets_the_p90_of_the_router_histogram_not_exact_latencies(perf_csv,
                                                                                   monkeypatch):
    seen: list[tuple[str, float, autoscaling.PoolMetrics]] = []
    real = autoscaling.PhaseAutoscaler.on_tick

    def on_tick(self, now, metrics):
        seen.append((self.phase.value, now, metrics))
        return real(self, now, metrics)

    monkeypatch.setattr(autoscaling.PhaseAutoscaler, "on_tick", on_tick)
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1,
                       autoscale=AutoscaleMode.PHASE, autoscale_interval_s=10.0, perf_csv=perf_csv)
    # The second request keeps the ticks going past the first one's interval.
    result, _ = simulate(config, make_trace([1.0, 25.0], [1000, 100], [50, 2]))
    exact_ttft = result.requests.first_token_s[0] - 1.0
    assert exact_ttft == pytest.approx(perf_for(config, "H100").prefill_time(1000))
    prefill = {now: m for phase, now, m in seen if phase == "prefill"}
    decode = {now: m for phase, now, m in seen if phase == "decode"}
    assert prefill[0.0].ttft_p90_s is None and prefill[0.0].prefill_tokens_per_s == 0
    # One first token in the interval (0, 10]: the P90 interpolates inside its bucket.
    assert prefill[10.0].ttft_p90_s == pytest.approx(_interpolated_p90(exact_ttft, LATENCY_BUCKETS_S))
    assert prefill[10.0].ttft_p90_s != pytest.approx(exact_ttft)
    assert prefill[10.0].prefill_tokens_per_s == pytest.approx(100.0)  # 1,000 tokens in 10 s
    assert decode[10.0].itl_p90_s is not None and decode[10.0].ttft_p90_s is None
    assert prefill[10.0].itl_p90_s is None


def test_simulated_scrapes_match_what_the_real_registry_exposes(perf_csv):
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1, perf_csv=perf_csv)
    sim = Simulator(config)
    sim.run(make_trace([0.0, 0.1, 0.2], [3000, 800, 500], [400, 300, 200]))
    machine = sim.decode_pool.machines[0]
    machine.kv_reserved, machine.batch_size, machine.queued_prompt_tokens = 48_000, 7, 900
    machine.joins.extend([0, 1])
    # The same state published through the contract's registry, as worker_main does.
    real = Metrics.create()
    labels = {"worker": machine.machine_id, "model": config.model}
    by_phase = {"phase": "decode", **labels}
    real.queue_requests.labels(**by_phase).set(2)
    real.queue_prompt_tokens.labels(**by_phase).set(900)
    real.running_requests.labels(**by_phase).set(7)
    real.kv_blocks_used.labels(**labels).set(3000)
    real.kv_blocks_total.labels(**labels).set(machine.kv_capacity // 16)
    real.prefill_tokens.labels(**labels).inc(machine.prefilled_tokens)
    router = RouterTelemetry(config.model)
    for seconds in (0.004, 0.03, 0.03, 0.2, 7.0, 100.0):
        real.ttft_seconds.labels(worker="router", model=config.model).observe(seconds)
        router.ttft.observe(seconds)
        real.itl_seconds.labels(worker="router", model=config.model).observe(seconds / 10)
        router.itl.observe(seconds / 10)
    exposed = parse_samples(real.exposition()[0].decode())
    simulated = {**machine_samples(machine, Phase.DECODE, config.model), **router.samples()}
    for name, series in simulated.items():
        assert sorted((sorted(s.items()), v) for s, v in series) == \
            sorted((sorted(s.items()), v) for s, v in exposed[name]), name
    # And the reader makes the same load of both, interval after interval.
    loads = []
    for samples in (exposed, simulated):
        reader = PoolLoadReader(Phase.DECODE)
        reader.read(0.0, {"decode-0": samples}, {"router": {}})
        loads.append(reader.read(15.0, {"decode-0": samples}, {"router": samples}))
    assert loads[0] == loads[1] and loads[0].num_waiting_seqs == 2
