"""A pool's load read from scrapes of its worker pods and of the router: what the autoscaler sees.

The operator scrapes real pods and the simulator builds the same samples for its machines; both
turn them into `PoolLoad` here and into the policy's `PoolMetrics` with `to_pool_metrics`, so that
the autoscaler gets the same signals, at the same granularity, live and in simulation.

Latency is measured where users see it, at the router, which labels it with the model served
(the name the workers announce, and label their own series with): the time to first token is the
prefill pool's signal and the time between tokens the decode pool's, as the Dynamo planner does
with its frontend's TTFT and ITL. A pool reads the router's series of the models its own workers
report, so no name has to be configured twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tandem.policy.autoscaling import Phase, PoolMetrics
from tandem.telemetry.exposition import (
    Samples,
    add_buckets,
    bucket_counts,
    bucket_deltas,
    delta,
    histogram_quantile,
    sum_samples,
)

TTFT_HISTOGRAM = "tandem_ttft_seconds"
ITL_HISTOGRAM = "tandem_itl_seconds"


@dataclass(slots=True, frozen=True)
class PoolLoad:
    """A pool's load as its workers and the router report it, summed over pods."""

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


@dataclass(slots=True, frozen=True)
class _Scraped:
    """One pod's cumulative counters (or one router's latency buckets by model) at one moment."""

    time: float
    prefill_tokens: float = 0.0
    latency_buckets: dict[str, dict[float, float]] = field(default_factory=dict)


class PoolLoadReader:
    """One pool's load from successive scrapes: gauges summed over its pods, counters and the
    router's latency histogram as rates and a P90 over the time since this reader's previous
    scrape of the same pod (so the first scrape of a pod adds nothing)."""

    def __init__(self, phase: Phase) -> None:
        self.phase = Phase(phase)
        self._workers: dict[str, _Scraped] = {}
        self._routers: dict[str, _Scraped] = {}

    def read(self, now: float, workers: Mapping[str, Samples],
             routers: Mapping[str, Samples]) -> PoolLoad:
        """The load at `now` from the pool's ready worker pods and the router pods, by pod id."""
        phase = self.phase.value
        totals = dict.fromkeys(("num_queued_prompt_tokens", "prefill_tokens_per_s",
                                "num_running_seqs", "num_waiting_seqs", "num_kv_blocks_used",
                                "num_kv_blocks_total"), 0.0)
        for pod_id, samples in workers.items():
            totals["num_queued_prompt_tokens"] += sum_samples(
                samples, "tandem_queue_prompt_tokens", phase="prefill")
            totals["num_running_seqs"] += sum_samples(samples, "tandem_running_requests", phase=phase)
            totals["num_waiting_seqs"] += sum_samples(samples, "tandem_queue_requests", phase=phase)
            totals["num_kv_blocks_used"] += sum_samples(samples, "tandem_kv_blocks_used")
            totals["num_kv_blocks_total"] += sum_samples(samples, "tandem_kv_blocks_total")
            scraped = _Scraped(now, prefill_tokens=sum_samples(samples, "tandem_prefill_tokens_total"))
            before = self._remember(self._workers, pod_id, scraped)
            if before is not None:
                increase = delta(scraped.prefill_tokens, before.prefill_tokens)
                totals["prefill_tokens_per_s"] += increase / (now - before.time)
        models = {series["model"] for samples in workers.values()
                  for series, _ in samples.get("tandem_kv_blocks_total", []) if "model" in series}
        latency = self._latency_p90(now, routers, models)
        _forget_except(self._workers, workers)
        _forget_except(self._routers, routers)
        is_prefill = self.phase is Phase.PREFILL
        return PoolLoad(**totals, ttft_p90_s=latency if is_prefill else None,
                        itl_p90_s=None if is_prefill else latency)

    def _latency_p90(self, now: float, routers: Mapping[str, Samples],
                     models: set[str]) -> float | None:
        histogram = TTFT_HISTOGRAM if self.phase is Phase.PREFILL else ITL_HISTOGRAM
        increases = []
        for pod_id, samples in routers.items():
            names = {series.get("model", "") for series, _ in samples.get(f"{histogram}_bucket", [])}
            scraped = _Scraped(now, latency_buckets={
                name: bucket_counts(samples, histogram, model=name) for name in names})
            before = self._remember(self._routers, pod_id, scraped)
            if before is None:
                continue
            # A series the router did not have at its previous scrape started from zero since.
            for name in models:
                increases.append(bucket_deltas(scraped.latency_buckets.get(name, {}),
                                               before.latency_buckets.get(name, {})))
        return histogram_quantile(0.9, add_buckets(increases))

    @staticmethod
    def _remember(store: dict[str, _Scraped], pod_id: str, scraped: _Scraped) -> _Scraped | None:
        # The previous scrape of the pod, if it is older than this one.
        before = store.get(pod_id)
        store[pod_id] = scraped
        return before if before is not None and scraped.time > before.time else None


def _forget_except(store: dict[str, _Scraped], pod_ids: Mapping[str, Samples]) -> None:
    # Pods that left the pool must not keep their counters forever.
    for pod_id in set(store) - set(pod_ids):
        del store[pod_id]


def to_pool_metrics(phase: Phase, load: PoolLoad, num_ready: int, num_desired: int) -> PoolMetrics:
    """The policy's observation of one pool."""
    return PoolMetrics(
        phase=phase,
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
