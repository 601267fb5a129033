"""Applies `tandem.policy.autoscaling` to the simulated pools, as the operator does to real ones.

Every tick the driver observes each pool (`PoolMetrics`), asks its autoscaler for a decision, and
applies it: new machines become ready after the provisioning delay (and cost from the moment they
are requested); removed machines stop taking work and leave once drained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tandem.policy import autoscaling
from tandem.sim.config import AutoscaleMode, SimConfig
from tandem.sim.machine import Machine
from tandem.sim.perf_model import PerfModel
from tandem.sim.pools import Pool
from tandem.sim.traces import Trace

if TYPE_CHECKING:
    from tandem.sim.engine import Simulator


@dataclass(slots=True, frozen=True)
class SloTargets:
    """The slowdown SLOs as absolute targets for the autoscalers, and the trace's mean sizes."""

    ttft_s: float   # queued prompts drain within this; observed TTFT P90 must stay under it
    itl_s: float    # decode batches iterate within this; observed inter-token P90 stays under it
    mean_prompt_tokens: float
    mean_context_tokens: float


def slo_targets(config: SimConfig, trace: Trace, reference: PerfModel) -> SloTargets:
    """The P90 slowdown limits (the policies watch P90 latencies) applied on an unloaded reference
    machine to the trace's P90 prompt (TTFT) and to its mean context (time between tokens)."""
    prompt, output = trace.prompt_tokens, trace.output_tokens
    # Unloaded, a request's first token comes after exactly its prefill.
    ttft_ref = reference.prefill_time(float(np.percentile(prompt, 90)))
    mean_context = float(prompt.mean() + output.mean() / 2)
    return SloTargets(ttft_s=config.slo.ttft[1] * ttft_ref,
                      itl_s=config.slo.tbt[1] * reference.decode_time(1, mean_context),
                      mean_prompt_tokens=float(prompt.mean()), mean_context_tokens=mean_context)


def autoscaling_config(config: SimConfig, pool: Pool,
                       targets: SloTargets) -> autoscaling.AutoscalingConfig:
    """The policy settings of one pool, with its capacity at the SLO read off the perf model."""
    perf = pool.perf
    # Prefill throughput at the iteration size the trace produces: full token budgets, or one
    # prompt per iteration when prompts are longer than the budget (attention grows with length);
    # at the SLO a replica runs below its peak, or short prompts queue behind bursts.
    iteration_tokens = max(config.max_batch_tokens, targets.mean_prompt_tokens)
    peak_tokens_s = iteration_tokens / perf.prefill_time(iteration_tokens)
    per_replica_tokens_s = config.prefill_capacity_fraction * peak_tokens_s
    context = targets.mean_context_tokens
    max_seqs = 1
    while (max_seqs < config.max_batch_size and
           perf.decode_time(max_seqs + 1, (max_seqs + 1) * context) <= targets.itl_s):
        max_seqs += 1
    return autoscaling.AutoscalingConfig(
        min_replicas=config.min_machines, max_replicas=config.max_machines,
        ttft_slo_s=targets.ttft_s, itl_slo_s=targets.itl_s,
        interval_s=config.autoscale_interval_s,
        scale_up_stabilization_s=config.scale_up_stabilization_s,
        scale_down_stabilization_s=config.scale_down_stabilization_s,
        max_scale_up_step=4, max_scale_down_step=1,
        prefill_tokens_per_s_per_replica=per_replica_tokens_s,
        max_seqs_per_replica_at_itl_slo=float(max_seqs), target_kv_usage=0.8,
        enabled=config.autoscale is not AutoscaleMode.STATIC)


class ScalingDriver:
    """Observes pools each tick, runs their autoscalers, and records replicas and actions."""

    def __init__(self, config: SimConfig, sim: Simulator) -> None:
        self.config, self.sim = config, sim
        self.autoscalers: dict[str, object] = {}
        self.actions: list[dict] = []
        self.timeline: list[dict] = []
        self._last_tick: float | None = None
        self._last_prefilled: dict[str, int] = {}

    def configure(self, targets: SloTargets) -> None:
        """Creates one autoscaler per pool for the configured mode (none when static)."""
        mode = self.config.autoscale
        for pool in self.sim.pools:
            settings = autoscaling_config(self.config, pool, targets)
            if mode is AutoscaleMode.PHASE:
                self.autoscalers[pool.name] = autoscaling.PhaseAutoscaler(settings, pool.phase)
            elif mode is AutoscaleMode.UTILIZATION:
                self.autoscalers[pool.name] = autoscaling.UtilizationAutoscaler(
                    settings, pool.phase, target_utilization=self.config.utilization_target)

    def tick(self, now: float) -> None:
        """One observation and decision per pool."""
        elapsed = self.config.autoscale_interval_s if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        for pool in self.sim.pools:
            metrics = self.observe(pool, max(elapsed, 1e-9))
            scaler = self.autoscalers.get(pool.name)
            if scaler is not None:
                decision = scaler.on_tick(now, metrics)
                if decision.is_change:
                    self._apply(pool, decision.desired_replicas, now)
                    self.actions.append({"time_s": round(now, 3), "pool": pool.name,
                                         "from": metrics.num_desired_replicas,
                                         "to": decision.desired_replicas, "reason": decision.reason})
            self.timeline.append({"time_s": now, "pool": pool.name, "ready": len(pool.routable),
                                  "desired": pool.desired})

    def observe(self, pool: Pool, elapsed_s: float) -> autoscaling.PoolMetrics:
        """The pool's metrics since the previous tick, as the operator reads them from Prometheus."""
        machines = pool.machines
        ready = pool.routable
        prefilled = pool.prefilled_tokens - self._last_prefilled.get(pool.name, 0)
        self._last_prefilled[pool.name] = pool.prefilled_tokens
        queued = sum(m.queued_prompt_tokens for m in machines)
        if pool.phase is autoscaling.Phase.PREFILL:
            waiting = sum(len(m.prompt_queue) for m in machines) + len(self.sim.diverted)
            queued += self.sim.diverted_tokens
        else:
            # Decode load is what decodes here or waits for a batch slot with its KV here;
            # requests still in prefill elsewhere are the prefill pool's load until they arrive.
            waiting = sum(len(m.joins) for m in machines) + len(self.sim.backlog)
            if pool.name == "colocated":
                waiting += sum(len(m.prompt_queue) for m in machines)
        kv = sum(m.kv_reserved / m.kv_capacity for m in ready) / len(ready) if ready else 0.0
        metrics = autoscaling.PoolMetrics(
            phase=pool.phase, num_ready_replicas=len(ready), num_desired_replicas=pool.desired,
            num_queued_prompt_tokens=float(queued),
            prefill_tokens_per_s=prefilled / elapsed_s,
            num_running_seqs=float(sum(m.batch_size for m in machines)),
            num_waiting_seqs=float(waiting), kv_usage=min(1.0, kv),
            ttft_p90_s=_p90(pool.recent_ttft) if pool.phase is autoscaling.Phase.PREFILL else None,
            itl_p90_s=_p90(pool.recent_tbt) if pool.phase is autoscaling.Phase.DECODE else None)
        pool.recent_ttft.clear()
        pool.recent_tbt.clear()
        return metrics

    def _apply(self, pool: Pool, target: int, now: float) -> None:
        while pool.desired < target:
            self.sim.add_machine(pool, now, self.config.provision_delay_s)
        while pool.desired > target:
            victim = _least_busy(pool)
            victim.is_accepting = False
            victim.snapshot_cache = None
            pool.desired -= 1
            pool.refresh()
            self.sim.retire_if_idle(victim, now)


def _least_busy(pool: Pool) -> Machine:
    # Cancel a machine still starting first; otherwise drain the one with the least work on it.
    candidates = [m for m in pool.machines if m.is_accepting]
    return min(candidates, key=lambda m: (m.is_ready, m.batch_size + len(m.prompt_queue)
                                          + len(m.joins) + m.num_expected, -m.index))


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
