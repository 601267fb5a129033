"""The seam between where pool metrics come from and the shared scaling policy.

A `MetricsSource` reads one pool's phase load (summed over its pods, rates per second, P90
latencies); `to_pool_metrics` adds the replica counts from the pool's Deployment and gives the
policy its `PoolMetrics`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tandem.policy.autoscaling import Phase, PoolMetrics

from tandem_operator.naming import Role, pool_name, selector_labels


class MetricsUnavailable(Exception):
    """The pool's load could not be read this tick (the autoscaler holds and says why)."""


@dataclass(slots=True, frozen=True)
class PoolRef:
    """One worker pool of one TandemDeployment."""

    namespace: str
    deployment: str
    tier: str
    phase: Phase

    @property
    def name(self) -> str:
        """The pool's Deployment name."""
        return pool_name(self.deployment, self.tier, Role.of_phase(self.phase))

    def labels(self) -> dict[str, str]:
        """The labels that select the pool's pods."""
        return selector_labels(self.deployment, Role.of_phase(self.phase), self.tier)


@dataclass(slots=True, frozen=True)
class PoolLoad:
    """A pool's load as its workers report it, summed over pods."""

    num_queued_prompt_tokens: float = 0.0
    prefill_tokens_per_s: float = 0.0
    num_running_seqs: float = 0.0
    num_waiting_seqs: float = 0.0
    num_kv_blocks_used: float = 0.0
    num_kv_blocks_total: float = 0.0
    ttft_p90_s: float | None = None
    itl_p90_s: float | None = None

    @property
    def kv_usage(self) -> float:
        """The fraction of the pool's KV blocks in use (the mean over replicas, block-weighted)."""
        if self.num_kv_blocks_total <= 0:
            return 0.0
        return min(1.0, max(0.0, self.num_kv_blocks_used / self.num_kv_blocks_total))


class MetricsSource(Protocol):
    """Reads the current load of one pool."""

    async def read_load(self, pool: PoolRef) -> PoolLoad:
        """The pool's load now; raises MetricsUnavailable when it cannot be read."""
        ...


def to_pool_metrics(pool: PoolRef, load: PoolLoad, num_ready: int, num_desired: int) -> PoolMetrics:
    """The policy's observation of one pool."""
    return PoolMetrics(
        phase=pool.phase,
        num_ready_replicas=num_ready,
        num_desired_replicas=num_desired,
        num_queued_prompt_tokens=max(0.0, load.num_queued_prompt_tokens),
        prefill_tokens_per_s=max(0.0, load.prefill_tokens_per_s),
        num_running_seqs=max(0.0, load.num_running_seqs),
        num_waiting_seqs=max(0.0, load.num_waiting_seqs),
        kv_usage=load.kv_usage,
        ttft_p90_s=load.ttft_p90_s,
        itl_p90_s=load.itl_p90_s,
    )
