"""The seam between where pool metrics come from and the shared scaling policy.

A `MetricsSource` reads one pool's load (`tandem.policy.pool_load.PoolLoad`: its phase load
summed over its pods, rates per second, and the P90 latency of its phase from the router);
`tandem.policy.pool_load.to_pool_metrics` adds the replica counts from the pool's Deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tandem.policy.autoscaling import Phase
from tandem.policy.pool_load import PoolLoad

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

    def router_labels(self) -> dict[str, str]:
        """The labels that select the router pods, which measure the pool's latency."""
        return selector_labels(self.deployment, Role.ROUTER)


class MetricsSource(Protocol):
    """Reads the current load of one pool."""

    async def read_load(self, pool: PoolRef) -> PoolLoad:
        """The pool's load now; raises MetricsUnavailable when it cannot be read."""
        ...
