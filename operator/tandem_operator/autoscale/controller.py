"""One TandemDeployment's autoscaler: metrics -> shared policy -> connector, pool by pool.

Each pool keeps its own `PhaseAutoscaler` (and so its stabilisation history) across ticks; a
changed policy config starts that pool's history afresh. Pools in `fixed` mode (the spec's
replicas, kept by the reconciler) and in `external` mode (an HPA or KEDA owns the replicas) are
never read nor written: their decision only reports their mode and size.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tandem.policy.autoscaling import AutoscalingConfig, Phase, PhaseAutoscaler, ScalingDecision
from tandem.policy.pool_load import to_pool_metrics

from tandem_operator.autoscale.connector import ScalingConnector
from tandem_operator.autoscale.metrics import (
    MetricsSource,
    MetricsUnavailable,
    PoolRef,
)
from tandem_operator.autoscale.mode import ModeOf, ScalingMode, pool_scaling_mode
from tandem_operator.kube import KubeError
from tandem_operator.spec import AutoscalingSpec, DeploymentSpec, pool_autoscaling_config
from tandem_operator.status import WorkloadState


@dataclass(slots=True, frozen=True)
class PoolDecision:
    """What the autoscaler decided for one pool on one tick (or why it could not)."""

    pool: PoolRef
    num_replicas_before: int
    num_replicas: int
    reason: str
    is_change: bool
    time: str
    mode: ScalingMode = ScalingMode.OPERATOR
    num_stalled_replicas: int = 0  # replicas unready past the policy's pending timeout

    def as_status(self) -> dict[str, Any]:
        """The decision as it appears in the TandemDeployment status."""
        return {"pool": self.pool.name, "tier": self.pool.tier, "phase": self.pool.phase.value,
                "mode": self.mode.value,
                "fromReplicas": self.num_replicas_before, "toReplicas": self.num_replicas,
                "reason": self.reason, "isChange": self.is_change, "time": self.time}


class DeploymentAutoscaler:
    """Runs the shared policy for every pool of one TandemDeployment that the operator scales."""

    def __init__(self, source_factory: Callable[[AutoscalingSpec], MetricsSource],
                 connector: ScalingConnector, scaling_mode: ModeOf = pool_scaling_mode) -> None:
        self._source_factory = source_factory
        self._connector = connector
        self._scaling_mode = scaling_mode
        self._source: tuple[AutoscalingSpec, MetricsSource] | None = None
        self._pools: dict[str, tuple[AutoscalingConfig, PhaseAutoscaler]] = {}

    async def tick(self, now: float, namespace: str, spec: DeploymentSpec,
                   states: Mapping[str, WorkloadState]) -> list[PoolDecision]:
        """Observes, decides and scales each pool in `operator` mode and reports the others;
        `now` is a monotonic time in s."""
        decisions, seen = [], set()
        for tier in spec.tiers:
            for phase in Phase:
                pool = PoolRef(namespace, spec.name, tier.name, phase)
                pool_spec = tier.prefill if phase is Phase.PREFILL else tier.decode
                mode = self._scaling_mode(spec.autoscaling, pool_spec)
                state = states.get(pool.name)
                if state is None:
                    continue
                if mode is not ScalingMode.OPERATOR:
                    decisions.append(_not_ours(pool, mode, state))
                    continue
                seen.add(pool.name)
                config = pool_autoscaling_config(spec.autoscaling, pool_spec)
                decisions.append(await self._tick_pool(now, pool, config, state, spec.autoscaling))
        self._pools = {name: entry for name, entry in self._pools.items() if name in seen}
        return decisions

    async def _tick_pool(self, now: float, pool: PoolRef, config: AutoscalingConfig,
                         state: WorkloadState, autoscaling: AutoscalingSpec) -> PoolDecision:
        current = state.num_desired
        try:
            load = await self._source_for(autoscaling).read_load(pool)
        except MetricsUnavailable as exc:
            return _decision(pool, current, ScalingDecision(current, f"holding: {exc}", False))
        metrics = to_pool_metrics(pool.phase, load, state.num_ready, current)
        decision = self._autoscaler_for(pool, config).on_tick(now, metrics)
        if decision.is_change:
            try:
                await self._connector.scale(pool, decision.desired_replicas)
            except KubeError as exc:
                failed = f"could not scale to {decision.desired_replicas}: {exc}"
                return _decision(pool, current, ScalingDecision(current, failed, False))
        return _decision(pool, current, decision)

    def _autoscaler_for(self, pool: PoolRef, config: AutoscalingConfig) -> PhaseAutoscaler:
        entry = self._pools.get(pool.name)
        if entry is None or entry[0] != config:
            entry = (config, PhaseAutoscaler(config, pool.phase))
            self._pools[pool.name] = entry
        return entry[1]

    def _source_for(self, autoscaling: AutoscalingSpec) -> MetricsSource:
        # Sources keep state between ticks (previous scrapes): rebuild only when their spec changes.
        if self._source is None or _source_key(self._source[0]) != _source_key(autoscaling):
            self._source = (autoscaling, self._source_factory(autoscaling))
        return self._source[1]


def _source_key(autoscaling: AutoscalingSpec) -> tuple[Any, ...]:
    return autoscaling.metrics_source, autoscaling.prometheus_url, autoscaling.rate_window


def _not_ours(pool: PoolRef, mode: ScalingMode, state: WorkloadState) -> PoolDecision:
    # The spec or an HPA/KEDA sizes the pool: report its size, read and write nothing.
    who = ("an external scaler (HPA or KEDA, through the Deployment's scale subresource)"
           if mode is ScalingMode.EXTERNAL else "the spec (scaling: fixed)")
    return _decision(pool, state.num_desired, ScalingDecision(
        state.num_desired, f"replicas set by {who}: {state.num_ready} of {state.num_desired} "
        f"ready", False), mode)


def _decision(pool: PoolRef, current: int, decision: ScalingDecision,
              mode: ScalingMode = ScalingMode.OPERATOR) -> PoolDecision:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return PoolDecision(pool, current, decision.desired_replicas, decision.reason,
                        decision.is_change, now, mode, decision.num_stalled_replicas)
