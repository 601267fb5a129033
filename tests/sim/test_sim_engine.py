"""The simulator's timing: exact unloaded latencies, queueing, KV transfer, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.policy.worker_choice import WorkerChoiceConfig
from tandem.sim.config import Design, SimConfig
from tandem.sim.metrics import window_summary
from tandem.sim.pools import perf_for
from tandem.sim.simulate import simulate
from tandem.sim.traces import poisson

from .conftest import make_trace


def _decode_seconds(perf, prompt: int, output: int) -> float:
    # Token 1 comes from the prefill; tokens 2..output from decode iterations of batch 1 whose
    # context grows from prompt + 1.
    return sum(perf.decode_time(1, prompt + 1 + k) for k in range(output - 1))


def test_one_request_on_an_idle_machine_takes_modelled_prefill_plus_decode(perf_csv):
    config = SimConfig(design=Design.COLOCATED, num_machines=1, gpu="A100", perf_csv=perf_csv)
    result, summary = simulate(config, make_trace([0.0], [1000], [50]))
    perf = perf_for(config, "A100")
    prefill = perf.prefill_time(1000)
    assert result.requests.first_token_s[0] == pytest.approx(prefill, rel=1e-12)
    expected = prefill + _decode_seconds(perf, 1000, 50)
    assert result.requests.finish_s[0] == pytest.approx(expected, rel=1e-12)
    # Against an unloaded A100 (the reference) every slowdown is exactly 1.
    for name in ("ttft", "tbt", "e2e"):
        assert summary["slo"]["checks"][name]["slowdown"]["p50"] == pytest.approx(1.0, rel=1e-9)


def test_disaggregated_request_pays_the_kv_transfer(perf_csv):
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1, prefill_gpu="H100",
                       decode_gpu="A100", link_bandwidth_gb_s=10.0, link_latency_s=0.002,
                       kv_overlap=0.5, perf_csv=perf_csv)
    result, summary = simulate(config, make_trace([0.0], [3000], [20]))
    prefill = perf_for(config, "H100").prefill_time(3000)
    transfer = 0.002 + 0.5 * 3000 * 327_680 / 10e9
    expected = prefill + transfer + _decode_seconds(perf_for(config, "A100"), 3000, 20)
    assert result.requests.first_token_s[0] == pytest.approx(prefill, rel=1e-12)
    assert result.requests.finish_s[0] == pytest.approx(expected, rel=1e-12)
    assert summary["routing"]["disaggregated"] == 1


def test_a_queue_forms_when_arrivals_exceed_the_service_rate(perf_csv):
    never_saturated = WorkerChoiceConfig(min_disaggregate_prompt_tokens=0,
                                         prefill_saturation_tokens=1e12)
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1,
                       worker_choice=never_saturated, perf_csv=perf_csv)
    prefill = perf_for(config, "H100").prefill_time(2048)
    # Prompts of 2,048 tokens (one per iteration) arriving twice as fast as one prefill takes.
    num = 20
    arrivals = [i * prefill / 2 for i in range(num)]
    result, _ = simulate(config, make_trace(arrivals, [2048] * num, [2] * num))
    ttft = np.asarray(result.requests.first_token_s) - np.asarray(arrivals)
    assert ttft[0] == pytest.approx(prefill)
    assert np.all(np.diff(ttft) > 0)  # each waits longer than the one before
    assert ttft[-1] == pytest.approx(num * prefill - arrivals[-1])  # back-to-back service
    slow = simulate(config, make_trace([i * prefill * 2 for i in range(num)], [2048] * num,
                                       [2] * num))[0]
    slow_ttft = np.asarray(slow.requests.first_token_s) - np.arange(num) * prefill * 2
    assert np.allclose(slow_ttft, prefill)  # below the service rate nobody waits


def test_saturated_prefill_pool_sends_prompts_to_the_decode_pool(perf_csv):
    # Splitwise's mixed pool: once the least-loaded prompt machine has 8,192 tokens pending,
    # prompts prefill on a decode machine instead.
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=1, perf_csv=perf_csv)
    num = 20
    result, summary = simulate(config, make_trace([0.0] * num, [2048] * num, [2] * num))
    assert summary["routing"]["disaggregated"] == 4
    assert summary["routing"]["prefilled_on_decode_machine"] == num - 4
    decode_index = result.requests.decode_machine[0]
    assert result.requests.prefill_machine[4:] == [decode_index] * (num - 4)


def test_continuous_batching_mixes_a_new_prompt_into_running_decodes(perf_csv):
    config = SimConfig(design=Design.COLOCATED, num_machines=1, perf_csv=perf_csv)
    result, _ = simulate(config, make_trace([0.0, 0.0], [500, 500], [30, 30]))
    perf = perf_for(config, "H100")
    # Request 0 prefills alone; request 1 (which arrived while the machine was busy) prefills in
    # the next iteration together with request 0's first decode; then both decode in one batch.
    first = perf.prefill_time(500)
    second = first + perf.mixed_time(500, 1, 501)
    both = sum(perf.decode_time(2, 502 + 501 + 2 * k) for k in range(28))
    assert result.requests.first_token_s == [pytest.approx(first), pytest.approx(second)]
    assert result.requests.finish_s[0] == pytest.approx(second + both)
    last = perf.decode_time(1, 501 + 28)
    assert result.requests.finish_s[1] == pytest.approx(second + both + last)


def test_runs_are_deterministic_for_a_seed(perf_csv, azure_trace_path):
    from tandem.sim.traces import load_trace

    base = load_trace(azure_trace_path)
    config = SimConfig(design=Design.TANDEM, num_prefill=2, num_decode=2, perf_csv=perf_csv)
    first = simulate(config, poisson(base, 8.0, 400, seed=5))[1]
    again = simulate(config, poisson(base, 8.0, 400, seed=5))[1]
    other = simulate(config, poisson(base, 8.0, 400, seed=6))[1]
    assert first == again
    assert first["ttft_s"] != other["ttft_s"]


def test_cost_energy_and_gpu_hours_follow_the_machines(perf_csv):
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=2, prefill_gpu="H100",
                       decode_gpu="A100", perf_csv=perf_csv)
    result, summary = simulate(config, make_trace([0.0, 1800.0], [100, 100], [2, 2]))
    hours = result.end_s / 3600
    assert summary["gpu_hours"] == pytest.approx(3 * 8 * hours)
    assert summary["cost"] == pytest.approx(hours * 8 * (4.76 + 2 * 2.21))  # $ per GPU-hour
    idle_kwh = hours * 0.2 * (700 + 2 * 400) * 8 / 1000
    assert idle_kwh < summary["energy_kwh"] < idle_kwh * 1.01  # nearly idle for half an hour
    assert summary["provisioned_power_kw"] == pytest.approx((700 + 2 * 400) * 8 / 1000)
    pricier = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=2, prefill_gpu="H100",
                        decode_gpu="A100", gpu_cost_per_hour={"A100": 4.42}, perf_csv=perf_csv)
    repriced = simulate(pricier, make_trace([0.0, 1800.0], [100, 100], [2, 2]))[1]
    assert repriced["cost"] == pytest.approx(hours * 8 * (4.76 + 2 * 4.42))


def test_prefix_locality_saves_prefill_on_shared_prefixes(perf_csv):
    config = SimConfig(design=Design.COLOCATED, num_machines=4, prefix_caching=True,
                       perf_csv=perf_csv)
    hashes = [[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 3, 6], [9, 10]]
    trace = make_trace([0.0, 5.0, 10.0, 15.0], [2000, 2000, 2000, 1000], [5] * 4, hashes)
    result, summary = simulate(config, trace)
    assert summary["routing"]["prefix_locality_choices"] == 2
    assert summary["routing"]["cached_prompt_tokens"] == 2 * 3 * 512
    machines = result.requests.prefill_machine
    assert machines[0] == machines[1] == machines[2]
    assert result.requests.uncached[1] == 2000 - 3 * 512


def test_bad_settings_are_rejected(perf_csv):
    with pytest.raises(ValueError, match="num_prefill"):
        SimConfig(design=Design.SPLITWISE, num_prefill=0)
    with pytest.raises(ValueError, match="autoscaling sizes separate"):
        SimConfig(design=Design.COLOCATED, autoscale="phase")
    with pytest.raises(ValueError, match="unknown GPU type"):
        simulate(SimConfig(gpu="V100", perf_csv=perf_csv), make_trace([0.0], [10], [2]))
    with pytest.raises(ValueError, match="kv_overlap"):
        SimConfig(kv_overlap=1.0)


def test_a_window_counts_the_machine_time_and_the_requests_inside_it(perf_csv):
    config = SimConfig(design=Design.SPLITWISE, num_prefill=1, num_decode=2, perf_csv=perf_csv)
    result, summary = simulate(config, make_trace([0.0, 10.0, 20.0, 30.0], [500] * 4, [20] * 4))
    reference = perf_for(config, config.reference_gpu)
    whole = window_summary(result, reference, 0.0, result.end_s)
    assert whole["gpu_hours"] == pytest.approx(summary["gpu_hours"])
    assert whole["slo"] == summary["slo"] and whole["num_requests"] == 4
    part = window_summary(result, reference, 5.0, 25.0)
    assert part["num_requests"] == 2  # the requests arriving at 10 s and 20 s
    assert part["gpu_hours"] == pytest.approx(3 * 8 * 20.0 / 3600)  # 3 machines of 8 GPUs, 20 s
