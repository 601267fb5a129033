"""Applies `tandem.policy.autoscaling` to the simulated pools, as the operator does to real ones.

Every tick the driver scrapes each autoscaled pool as the operator's scrape source does: the
samples each ready machine's worker and the router would expose (`tandem.sim.telemetry`), read
by the operator's own `PoolLoadReader` into gauges, counter rates and a latency P90 over the
interval since the previous tick. It asks the pool's autoscaler for a decision and applies it:
new machines become ready after the provisioning delay (and cost from the moment they are
requested); removed machines stop taking work and leave once drained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tandem.policy import autoscaling
from tandem.policy.pool_load import PoolLoadReader, to_pool_metrics
from tandem.sim.config import AutoscaleMode, SimConfig
from tandem.sim.machine import Machine
from tandem.sim.perf_model import PerfModel
from tandem.sim.pools import Pool
from tandem.sim.telemetry import machine_samples
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
    """Scrapes autoscaled pools each tick, runs their autoscalers, records replicas and actions."""

    def __init__(self, config: SimConfig, sim: Simulator) -> None:
        self.config, self.sim = config, sim
        self.autoscalers: dict[str, object] = {}
        self.readers: dict[str, PoolLoadReader] = {}
        self.actions: list[dict] = []
        self.timeline: list[dict] = []

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
            if pool.name in self.autoscalers:
                self.readers[pool.name] = PoolLoadReader(pool.phase)

    def tick(self, now: float) -> None:
        """One scrape and decision per autoscaled pool."""
        router = {"router": self.sim.router.samples()} if self.autoscalers else {}
        for pool in self.sim.pools:
            scaler = self.autoscalers.get(pool.name)
            if scaler is not None:
                metrics = self.observe(pool, now, router)
                decision = scaler.on_tick(now, metrics)
                if decision.is_change:
                    self._apply(pool, decision.desired_replicas, now)
                    self.actions.append({"time_s": round(now, 3), "pool": pool.name,
                                         "from": metrics.num_desired_replicas,
                                         "to": decision.desired_replicas, "reason": decision.reason})
            self.timeline.append({"time_s": now, "pool": pool.name, "ready": len(pool.routable),
                                  "desired": pool.desired})

    def observe(self, pool: Pool, now: float, router: dict) -> autoscaling.PoolMetrics:
        """The pool's metrics as the operator's scrape source reads them: its ready machines
        (draining ones are terminating pods, not scraped) and the router."""
        model = self.config.model
        workers = {m.machine_id: machine_samples(m, pool.phase, model) for m in pool.routable}
        load = self.readers[pool.name].read(now, workers, router)
        return to_pool_metrics(pool.phase, load, len(pool.routable), pool.desired)

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

