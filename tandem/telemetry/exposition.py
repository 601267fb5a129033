"""Prometheus text exposition read back: parse one scrape, sum series, estimate histogram quantiles.

Shared by the operator (which scrapes real pods) and the simulator (which builds the same samples
for its simulated pods), so that both read pool load with the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]  # sample name -> (labels, value)


def parse_samples(text: str) -> Samples:
    """All samples of a scrape by sample name (`x_total`, `x_bucket`, plain gauges)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return samples


def sum_samples(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a sample's values over series whose labels include `labels`."""
    return sum(value for series, value in samples.get(name, [])
               if all(series.get(key) == want for key, want in labels.items()))


def bucket_counts(samples: Samples, histogram: str, **labels: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound (`le`), summed over the series whose labels
    include `labels`."""
    counts: dict[float, float] = {}
    for series, value in samples.get(f"{histogram}_bucket", []):
        if all(series.get(key) == want for key, want in labels.items()):
            upper = float(series["le"])
            counts[upper] = counts.get(upper, 0.0) + value
    return counts


def histogram_quantile(quantile: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's `histogram_quantile`: linear interpolation inside the bucket that holds the
    rank; None when the histogram is empty. `buckets` are cumulative counts by upper bound."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = quantile * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if math.isinf(upper):
                return lower  # beyond the highest finite bound: report that bound
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def delta(current: float, previous: float | None) -> float:
    """A counter's increase since the previous scrape; a reset (process restart) counts from 0."""
    if previous is None:
        return 0.0
    return current - previous if current >= previous else current


def bucket_deltas(current: Mapping[float, float],
                  previous: Mapping[float, float] | None) -> dict[float, float]:
    """Per-bucket increases since the previous scrape (empty on the first scrape)."""
    if previous is None:
        return {}
    return {upper: delta(count, previous.get(upper, 0.0)) for upper, count in current.items()}


def add_buckets(parts: Iterable[Mapping[float, float]]) -> dict[float, float]:
    """Sums bucket counts of several pods."""
    total: dict[float, float] = {}
    for part in parts:
        for upper, count in part.items():
            total[upper] = total.get(upper, 0.0) + count
    return total
