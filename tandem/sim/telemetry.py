"""What the simulated pods expose on /metrics: the samples a scrape of each machine and of the
router would return, built from the simulator's state with the contract's names, labels and
histogram buckets (`tandem.telemetry.metrics`). The autoscaling driver reads them with the
operator's own reader (`tandem.policy.pool_load`), so the policy sees what it sees on a cluster.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from tandem.policy.autoscaling import Phase
from tandem.policy.pool_load import ITL_HISTOGRAM, TTFT_HISTOGRAM
from tandem.sim.machine import KV_BLOCK_TOKENS, Machine
from tandem.telemetry.exposition import Samples
from tandem.telemetry.metrics import ITL_BUCKETS_S, LATENCY_BUCKETS_S


class BucketCounts:
    """A histogram's per-bucket observation counts, as prometheus_client keeps them (le bounds)."""

    __slots__ = ("bounds", "counts")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = (*bounds, math.inf)
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float, count: int = 1) -> None:
        """Adds `count` observations of `value` (to the first bucket whose bound holds it)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += count

    def samples(self, labels: dict[str, str]) -> list[tuple[dict[str, str], float]]:
        """The cumulative `_bucket` series, as a scrape shows them."""
        total, series = 0, []
        for bound, count in zip(self.bounds, self.counts):
            total += count
            series.append(({**labels, "le": "+Inf" if math.isinf(bound) else repr(bound)},
                           float(total)))
        return series


class RouterTelemetry:
    """The router's latency histograms for one model: time to first token of each request and
    the gap before each further token of each sequence."""

    def __init__(self, model: str) -> None:
        self.labels = {"worker": "router", "model": model}
        self.ttft = BucketCounts(LATENCY_BUCKETS_S)
        self.itl = BucketCounts(ITL_BUCKETS_S)

    def samples(self) -> Samples:
        """What a scrape of the router returns (its latency histograms)."""
        return {f"{TTFT_HISTOGRAM}_bucket": self.ttft.samples(self.labels),
                f"{ITL_HISTOGRAM}_bucket": self.itl.samples(self.labels)}


def machine_samples(machine: Machine, phase: Phase, model: str) -> Samples:
    """What a worker on `machine` serving `phase` exposes: its phase gauges (as worker_main
    publishes the engine's stats), KV blocks and cumulative prefilled tokens."""
    labels = {"worker": machine.machine_id, "model": model}
    by_phase = {"phase": phase.value, **labels}
    if phase is Phase.PREFILL:
        waiting = len(machine.prompt_queue)
        running = len(machine.iter_prefill) if machine.is_busy else 0
    else:
        # Sequences whose KV arrived and prompts to prefill here both wait for the engine.
        waiting = len(machine.joins) + len(machine.prompt_queue)
        running = machine.batch_size
    return {
        "tandem_queue_requests": [(by_phase, float(waiting))],
        "tandem_queue_prompt_tokens": [(by_phase, float(machine.queued_prompt_tokens))],
        "tandem_running_requests": [(by_phase, float(running))],
        "tandem_kv_blocks_used": [(labels, float(min(machine.kv_reserved, machine.kv_capacity)
                                                // KV_BLOCK_TOKENS))],
        "tandem_kv_blocks_total": [(labels, float(machine.kv_capacity // KV_BLOCK_TOKENS))],
        "tandem_prefill_tokens_total": [(labels, float(machine.prefilled_tokens))],
    }
