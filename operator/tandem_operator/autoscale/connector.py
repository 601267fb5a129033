"""Applies a scaling decision to the cluster: the pool Deployment's replicas."""

from __future__ import annotations

from typing import Protocol

from tandem_operator.autoscale.metrics import PoolRef
from tandem_operator.kube import KubeClient, KubeError, retry_on_conflict


class ScalingConnector(Protocol):
    """Sets how many replicas a pool runs."""

    async def scale(self, pool: PoolRef, num_replicas: int) -> None:
        """Makes the pool run `num_replicas` replicas."""
        ...


class DeploymentScaler:
    """Patches `spec.replicas` of the pool's Deployment, conditional on the version it read."""

    def __init__(self, kube: KubeClient) -> None:
        self._kube = kube

    async def scale(self, pool: PoolRef, num_replicas: int) -> None:
        """Sets the replicas; a concurrent change (409) makes it read again and retry."""

        async def attempt() -> None:
            live = await self._kube.get("Deployment", pool.namespace, pool.name)
            if live is None:
                raise KubeError(404, "NotFound", f"deployment {pool.namespace}/{pool.name} is gone")
            if live.get("spec", {}).get("replicas") == num_replicas:
                return
            patch: dict = {"spec": {"replicas": num_replicas}}
            version = live["metadata"].get("resourceVersion")
            if version:
                patch["metadata"] = {"resourceVersion": version}
            await self._kube.patch("Deployment", pool.namespace, pool.name, patch)

        await retry_on_conflict(attempt)
