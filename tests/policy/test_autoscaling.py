"""The phase-aware autoscaler and the utilisation baseline: sizing, anti-flapping, guards."""

from __future__ import annotations

import random

import pytest

from tandem.policy.autoscaling import (
    AutoscalingConfig,
    Phase,
    PhaseAutoscaler,
    PoolMetrics,
    ScalingDecision,
    UtilizationAutoscaler,
)


def prefill_metrics(num_replicas: int, queued_tokens: float, tokens_per_s: float = 0.0,
                    *, desired: int | None = None, ttft_p90_s: float | None = None) -> PoolMetrics:
    return PoolMetrics(Phase.PREFILL, num_replicas, num_replicas if desired is None else desired,
                       queued_tokens, tokens_per_s, 0.0, 0.0, 0.0, ttft_p90_s=ttft_p90_s)


def decode_metrics(num_replicas: int, running: float, kv_usage: float = 0.1,
                   *, desired: int | None = None, itl_p90_s: float | None = None) -> PoolMetrics:
    return PoolMetrics(Phase.DECODE, num_replicas, num_replicas if desired is None else desired,
                       0.0, 0.0, running, 0.0, kv_usage, itl_p90_s=itl_p90_s)


def config(**overrides) -> AutoscalingConfig:
    base = dict(min_replicas=1, max_replicas=20, ttft_slo_s=2.0, itl_slo_s=0.1, interval_s=10.0,
                scale_up_stabilization_s=0.0, scale_down_stabilization_s=60.0,
                max_scale_up_step=4, max_scale_down_step=1,
                prefill_tokens_per_s_per_replica=10_000.0, max_seqs_per_replica_at_itl_slo=32.0)
    base.update(overrides)
    return AutoscalingConfig(**base)


def test_burst_of_long_prompts_scales_prefill_not_decode():
    prefill = PhaseAutoscaler(config(), Phase.PREFILL)
    decode = PhaseAutoscaler(config(), Phase.DECODE)
    # 20 prompts of 4,000 tokens arrive at once; each yields a short answer.
    p = prefill.on_tick(0.0, prefill_metrics(2, queued_tokens=80_000, tokens_per_s=20_000))
    d = decode.on_tick(0.0, decode_metrics(2, running=20, kv_usage=0.2))
    assert p.is_change and p.desired_replicas == 6  # 20k tok/s + 80k/2s = 60k tok/s = 6 replicas
    assert "prefill demand" in p.reason
    assert not d.is_change and d.desired_replicas == 2


def test_many_long_generations_scale_decode_not_prefill():
    prefill = PhaseAutoscaler(config(), Phase.PREFILL)
    decode = PhaseAutoscaler(config(), Phase.DECODE)
    p = prefill.on_tick(0.0, prefill_metrics(2, queued_tokens=2_000, tokens_per_s=4_000))
    d = decode.on_tick(0.0, decode_metrics(2, running=150, kv_usage=0.7))
    assert not p.is_change and p.desired_replicas == 2
    assert d.is_change and d.desired_replicas == 5  # ceil(150 / 32)
    assert "sequences" in d.reason


def test_decode_scales_on_kv_usage_when_sequences_fit():
    decode = PhaseAutoscaler(config(target_kv_usage=0.5), Phase.DECODE)
    d = decode.on_tick(0.0, decode_metrics(2, running=10, kv_usage=0.95))
    assert d.desired_replicas == 4  # 0.95 * 2 / 0.5 = 3.8


def _replay(autoscaler, loads: list[float], make) -> list[ScalingDecision]:
    """Feeds a series of loads to an autoscaler; the pool follows each decision at once."""
    replicas, decisions = 3, []
    for tick, load in enumerate(loads):
        decision = autoscaler.on_tick(tick * 10.0, make(replicas, load))
        decisions.append(decision)
        replicas = decision.desired_replicas
    return decisions


def test_noisy_load_does_not_flap():
    rng = random.Random(7)
    # Prefill demand hovering around 2.9 replicas' worth, +-25% noise, for 100 ticks of 10 s.
    loads = [29_000 * (1 + rng.uniform(-0.25, 0.25)) for _ in range(100)]
    make = lambda n, load: prefill_metrics(n, queued_tokens=0.0, tokens_per_s=load)  # noqa: E731
    stable = _replay(PhaseAutoscaler(config(), Phase.PREFILL), loads, make)
    naive = _replay(PhaseAutoscaler(config(scale_down_stabilization_s=0.0, interval_s=1.0,
                                           scale_down_headroom=1.0), Phase.PREFILL), loads, make)
    num_stable = sum(d.is_change for d in stable)
    num_naive = sum(d.is_change for d in naive)
    assert num_stable <= 2
    assert num_naive >= 10  # the same series without stabilisation flaps
    assert stable[-1].desired_replicas == 4  # holds enough for the noisy peaks


def test_scale_up_window_ignores_a_single_spike():
    scaler = PhaseAutoscaler(config(scale_up_stabilization_s=30.0), Phase.PREFILL)
    assert not scaler.on_tick(0.0, prefill_metrics(2, 0, 15_000)).is_change
    spike = scaler.on_tick(10.0, prefill_metrics(2, 200_000, 15_000))
    assert not spike.is_change
    assert scaler.on_tick(20.0, prefill_metrics(2, 0, 15_000)).desired_replicas == 2
    # A sustained need over the whole window does scale up.
    for t in (30.0, 40.0, 50.0):
        decision = scaler.on_tick(t, prefill_metrics(2, 100_000, 15_000))
    assert decision.is_change and decision.desired_replicas == 6


def test_bounds_and_steps():
    scaler = PhaseAutoscaler(config(max_replicas=6), Phase.PREFILL)
    first = scaler.on_tick(0.0, prefill_metrics(1, 10_000_000))
    assert first.desired_replicas == 5  # one step of 4 from 1
    second = scaler.on_tick(10.0, prefill_metrics(5, 10_000_000))
    assert second.desired_replicas == 6  # capped by max_replicas
    assert not scaler.on_tick(20.0, prefill_metrics(6, 10_000_000)).is_change
    down = PhaseAutoscaler(config(min_replicas=2, scale_down_stabilization_s=0.0), Phase.PREFILL)
    assert down.on_tick(0.0, prefill_metrics(5, 0)).desired_replicas == 4  # one step down
    assert down.on_tick(10.0, prefill_metrics(4, 0)).desired_replicas == 3
    assert down.on_tick(20.0, prefill_metrics(3, 0)).desired_replicas == 2
    assert not down.on_tick(30.0, prefill_metrics(2, 0)).is_change  # min_replicas


def test_out_of_bounds_pool_moves_to_the_bound():
    scaler = PhaseAutoscaler(config(min_replicas=3), Phase.DECODE)
    decision = scaler.on_tick(0.0, decode_metrics(1, running=0, kv_usage=0.0))
    assert decision.desired_replicas == 3 and "outside the bounds" in decision.reason


def test_no_action_while_previous_is_pending():
    scaler = PhaseAutoscaler(config(), Phase.PREFILL)
    decision = scaler.on_tick(0.0, prefill_metrics(2, 500_000, desired=4))
    assert not decision.is_change and decision.desired_replicas == 4
    assert "waiting for the previous action" in decision.reason
    assert scaler.on_tick(10.0, prefill_metrics(4, 500_000)).desired_replicas == 8


def test_a_replica_that_never_becomes_ready_blocks_the_pool_only_until_the_timeout():
    scaler = PhaseAutoscaler(config(pending_timeout_s=120.0, scale_down_stabilization_s=0.0),
                             Phase.DECODE)
    # 4 replicas asked for, one never schedules; meanwhile the load falls to one replica's worth.
    for now in (0.0, 60.0, 110.0):
        held = scaler.on_tick(now, decode_metrics(3, running=20, desired=4))
        assert not held.is_change and "waiting for the previous action" in held.reason
        assert held.num_stalled_replicas == 0
    down = scaler.on_tick(130.0, decode_metrics(3, running=20, desired=4))
    assert down.is_change and down.desired_replicas == 3
    assert down.num_stalled_replicas == 1 and "not ready for 130s" in down.reason
    # The next step needs no new timeout while replicas stay unready; readiness resets the clock.
    assert scaler.on_tick(145.0, decode_metrics(2, running=20, desired=3)).desired_replicas == 2
    ready = scaler.on_tick(160.0, decode_metrics(2, running=20))
    assert ready.desired_replicas == 1 and ready.num_stalled_replicas == 0
    again = scaler.on_tick(175.0, decode_metrics(0, running=20, desired=1))
    assert not again.is_change and "waiting for the previous action" in again.reason


def test_a_stalled_pool_still_scales_up_on_its_load():
    scaler = PhaseAutoscaler(config(pending_timeout_s=60.0), Phase.PREFILL)
    assert not scaler.on_tick(0.0, prefill_metrics(2, 0, 20_000, desired=3)).is_change
    up = scaler.on_tick(60.0, prefill_metrics(2, 100_000, 20_000, desired=3))
    assert up.desired_replicas == 7 and up.num_stalled_replicas == 1


def test_interval_limits_changes():
    scaler = PhaseAutoscaler(config(interval_s=30.0), Phase.PREFILL)
    assert scaler.on_tick(0.0, prefill_metrics(1, 500_000)).desired_replicas == 5
    held = scaler.on_tick(10.0, prefill_metrics(5, 500_000))
    assert not held.is_change and "interval" in held.reason
    assert scaler.on_tick(30.0, prefill_metrics(5, 500_000)).desired_replicas == 9


def test_disabled_keeps_current_replicas():
    scaler = PhaseAutoscaler(config(enabled=False), Phase.PREFILL)
    decision = scaler.on_tick(0.0, prefill_metrics(3, 10_000_000))
    assert decision == ScalingDecision(3, decision.reason, False)
    assert "disabled" in decision.reason
    baseline = UtilizationAutoscaler(config(enabled=False), Phase.DECODE)
    assert baseline.on_tick(0.0, decode_metrics(7, 0, kv_usage=0.0)).desired_replicas == 7


def test_scale_down_needs_the_load_to_fit_the_smaller_pool():
    scaler = PhaseAutoscaler(config(scale_down_stabilization_s=0.0), Phase.DECODE)
    # 92 sequences need 2.9 replicas: 3 replicas would run at 96% > 90% headroom, so keep 4.
    kept = scaler.on_tick(0.0, decode_metrics(4, running=92))
    assert not kept.is_change and "would miss the SLO" in kept.reason
    shrunk = scaler.on_tick(10.0, decode_metrics(4, running=80))
    assert shrunk.is_change and shrunk.desired_replicas == 3


def test_observed_latency_over_slo_adds_a_replica_and_blocks_scale_down():
    scaler = PhaseAutoscaler(config(scale_down_stabilization_s=0.0), Phase.DECODE)
    up = scaler.on_tick(0.0, decode_metrics(3, running=40, itl_p90_s=0.25))
    assert up.desired_replicas == 4 and "inter-token P90" in up.reason
    ttft = PhaseAutoscaler(config(scale_down_stabilization_s=0.0), Phase.PREFILL)
    assert ttft.on_tick(0.0, prefill_metrics(3, 0, 1_000, ttft_p90_s=5.0)).desired_replicas == 4


def test_utilization_baseline_follows_its_one_metric():
    scaler = UtilizationAutoscaler(config(scale_down_stabilization_s=0.0), Phase.DECODE,
                                   target_utilization=0.5)
    assert scaler.on_tick(0.0, decode_metrics(2, running=10, kv_usage=1.0)).desired_replicas == 4
    assert not scaler.on_tick(10.0, decode_metrics(4, running=10, kv_usage=0.52)).is_change
    assert scaler.on_tick(20.0, decode_metrics(4, running=10, kv_usage=0.2)).desired_replicas == 3
    prefill = UtilizationAutoscaler(config(), Phase.PREFILL, target_utilization=0.5)
    # A queue it cannot see: throughput at capacity reads as 100% whatever the backlog.
    decision = prefill.on_tick(0.0, prefill_metrics(2, 10_000_000, tokens_per_s=20_000))
    assert decision.desired_replicas == 4


def test_utilization_baseline_also_scales_on_the_latency_it_is_given():
    # An HPA with two metrics takes the larger recommendation: KV usage says shrink, the observed
    # inter-token P90 at twice the SLO says double.
    scaler = UtilizationAutoscaler(config(scale_down_stabilization_s=0.0), Phase.DECODE)
    decision = scaler.on_tick(0.0, decode_metrics(3, running=10, kv_usage=0.1, itl_p90_s=0.2))
    assert decision.desired_replicas == 6 and "inter-token P90" in decision.reason
    within = scaler.on_tick(20.0, decode_metrics(6, running=10, kv_usage=0.1, itl_p90_s=0.05))
    assert within.desired_replicas == 5  # both metrics say shrink (to 3): one step at a time
    prefill = UtilizationAutoscaler(config(), Phase.PREFILL)
    slow = prefill.on_tick(0.0, prefill_metrics(2, 0, tokens_per_s=1_000, ttft_p90_s=3.0))
    assert slow.desired_replicas == 3  # ceil(2 * 3.0 / 2.0)
    unknown = UtilizationAutoscaler(config(), Phase.DECODE).on_tick(
        0.0, decode_metrics(2, running=10, kv_usage=0.7, itl_p90_s=None))
    assert not unknown.is_change


def test_bad_settings_and_metrics_are_rejected():
    with pytest.raises(ValueError, match="max_replicas"):
        AutoscalingConfig(min_replicas=5, max_replicas=2)
    with pytest.raises(ValueError, match="min_replicas must be >= 1"):
        AutoscalingConfig(min_replicas=0)  # no scale-to-zero: see docs/kubernetes.md
    with pytest.raises(ValueError, match="pending_timeout_s"):
        AutoscalingConfig(pending_timeout_s=0)
    with pytest.raises(ValueError, match="ttft_slo_s"):
        AutoscalingConfig(ttft_slo_s=0)
    with pytest.raises(ValueError, match="target_kv_usage"):
        AutoscalingConfig(target_kv_usage=1.5)
    with pytest.raises(ValueError, match="max_scale_up_step"):
        AutoscalingConfig(max_scale_up_step=0)
    with pytest.raises(ValueError, match="kv_usage"):
        decode_metrics(1, running=1, kv_usage=2.0)
    with pytest.raises(ValueError, match="num_queued_prompt_tokens"):
        prefill_metrics(1, queued_tokens=-1)
    with pytest.raises(ValueError, match="decode pool given to a prefill"):
        PhaseAutoscaler(config(), Phase.PREFILL).on_tick(0.0, decode_metrics(1, 1))
    with pytest.raises(ValueError, match="target_utilization"):
        UtilizationAutoscaler(config(), Phase.DECODE, target_utilization=0.0)
