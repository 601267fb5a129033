"""Pool load scraped straight from the pods' /metrics (no Prometheus needed).

Gauges are summed over the pool's ready pods. Counters and histograms become rates and P90s over
the time since the previous scrape of the same pod, so the first scrape of a pod adds no rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from tandem_operator.autoscale.exposition import (
    Samples,
    add_buckets,
    bucket_counts,
    bucket_deltas,
    delta,
    histogram_quantile,
    parse_samples,
    sum_samples,
)
from tandem_operator.autoscale.metrics import MetricsUnavailable, PoolLoad, PoolRef
from tandem_operator.kube import KubeClient

DEFAULT_METRICS_PORT = 9090


@dataclass(slots=True, frozen=True)
class PodScrape:
    """One pod's cumulative counters at one moment."""

    time: float
    prefill_tokens: float
    ttft_buckets: dict[float, float]
    itl_buckets: dict[float, float]


class ScrapeSource:
    """A MetricsSource that lists the pool's ready pods and scrapes each one's metrics port."""

    def __init__(self, kube: KubeClient, session: aiohttp.ClientSession, timeout_s: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kube = kube
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._previous: dict[str, PodScrape] = {}  # by pod uid

    async def read_load(self, pool: PoolRef) -> PoolLoad:
        """Scrapes every ready pod; any pod that does not answer makes the tick's load unknown."""
        pods = [pod for pod in await self._kube.list("Pod", pool.namespace, pool.labels())
                if _is_ready(pod)]
        scrapes = await asyncio.gather(*(self._scrape(pod) for pod in pods))
        phase = pool.phase.value
        load: dict[str, float] = dict.fromkeys(
            ("num_queued_prompt_tokens", "prefill_tokens_per_s", "num_running_seqs",
             "num_waiting_seqs", "num_kv_blocks_used", "num_kv_blocks_total"), 0.0)
        ttft, itl = [], []
        for pod, samples in zip(pods, scrapes):
            load["num_queued_prompt_tokens"] += sum_samples(
                samples, "tandem_queue_prompt_tokens", phase="prefill")
            load["num_running_seqs"] += sum_samples(samples, "tandem_running_requests", phase=phase)
            load["num_waiting_seqs"] += sum_samples(samples, "tandem_queue_requests", phase=phase)
            load["num_kv_blocks_used"] += sum_samples(samples, "tandem_kv_blocks_used")
            load["num_kv_blocks_total"] += sum_samples(samples, "tandem_kv_blocks_total")
            rate, ttft_part, itl_part = self._since_previous(pod["metadata"]["uid"], samples)
            load["prefill_tokens_per_s"] += rate
            ttft.append(ttft_part)
            itl.append(itl_part)
        self._forget_except({pod["metadata"]["uid"] for pod in pods})
        return PoolLoad(**load, ttft_p90_s=histogram_quantile(0.9, add_buckets(ttft)),
                        itl_p90_s=histogram_quantile(0.9, add_buckets(itl)))

    def _since_previous(self, pod_uid: str,
                        samples: Samples) -> tuple[float, dict[float, float], dict[float, float]]:
        # Rates and bucket increases of one pod since its previous scrape.
        now = PodScrape(self._clock(), sum_samples(samples, "tandem_prefill_tokens_total"),
                        bucket_counts(samples, "tandem_ttft_seconds"),
                        bucket_counts(samples, "tandem_itl_seconds"))
        before = self._previous.get(pod_uid)
        self._previous[pod_uid] = now
        if before is None or now.time <= before.time:
            return 0.0, {}, {}
        rate = delta(now.prefill_tokens, before.prefill_tokens) / (now.time - before.time)
        return (rate, bucket_deltas(now.ttft_buckets, before.ttft_buckets),
                bucket_deltas(now.itl_buckets, before.itl_buckets))

    def _forget_except(self, pod_uids: set[str]) -> None:
        # Pods that left the pool must not keep their counters forever.
        for uid in set(self._previous) - pod_uids:
            del self._previous[uid]

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
