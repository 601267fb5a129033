"""Pool load scraped straight from the pods' /metrics (no Prometheus needed).

Each read lists the pool's ready pods and the router's ready pods and scrapes them all; one
`PoolLoadReader` per pool turns the samples into the pool's load, keeping that pool's previous
scrapes, so pools read in turn from this one source never disturb each other's rates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from tandem.policy.pool_load import PoolLoad, PoolLoadReader
from tandem.telemetry.exposition import Samples, parse_samples

from tandem_operator.autoscale.metrics import MetricsUnavailable, PoolRef
from tandem_operator.kube import KubeClient

DEFAULT_METRICS_PORT = 9090


class ScrapeSource:
    """A MetricsSource that scrapes the metrics port of each ready pod of the pool and the router."""

    def __init__(self, kube: KubeClient, session: aiohttp.ClientSession, timeout_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._readers: dict[str, PoolLoadReader] = {}  # by pool name

    async def read_load(self, pool: PoolRef) -> PoolLoad:
        """Scrapes every ready pod; any pod that does not answer makes the tick's load unknown."""
        workers = await self._ready_pods(pool.namespace, pool.labels())
        routers = await self._ready_pods(pool.namespace, pool.router_labels())
        pods = workers + routers
        scrapes = await asyncio.gather(*(self._scrape(pod) for pod in pods))
        by_uid = [(pod["metadata"]["uid"], samples) for pod, samples in zip(pods, scrapes)]
        return self._reader(pool).read(self._clock(), dict(by_uid[:len(workers)]),
                                       dict(by_uid[len(workers):]))

    def _reader(self, pool: PoolRef) -> PoolLoadReader:
        reader = self._readers.get(pool.name)
        if reader is None:
            reader = self._readers[pool.name] = PoolLoadReader(pool.phase)
        return reader

    async def _ready_pods(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return [pod for pod in await self._kube.list("Pod", namespace, labels) if _is_ready(pod)]

    async def _scrape(self, pod: dict[str, Any]) -> Samples:
        url = f"http://{pod['status']['podIP']}:{_metrics_port(pod)}/metrics"
        try:
            async with self._session.get(url, timeout=self._timeout) as response:
                if response.status != 200:
                    raise MetricsUnavailable(f"{pod['metadata']['name']}: {url} answered "
                                             f"{response.status}")
                return parse_samples(await response.text())
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise MetricsUnavailable(f"{pod['metadata']['name']}: scraping {url} failed: "
                                     f"{exc!r}") from exc


def _is_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(condition.get("type") == "Ready" and condition.get("status") == "True"
               for condition in status.get("conditions") or [])


def _metrics_port(pod: dict[str, Any]) -> int:
    for container in pod.get("spec", {}).get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name") == "metrics":
                return int(port["containerPort"])
    return DEFAULT_METRICS_PORT
