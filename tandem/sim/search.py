"""Searches the benchmarks use: the highest arrival rate a cluster sustains within its SLOs, and
the prefill/decode split that sustains the most under a budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class RateSearch:
    """The highest rate found to meet the SLOs, the lowest found to miss them, and every probe."""

    best_rate: float
    failed_rate: float
    probes: list[tuple[float, bool]] = field(default_factory=list)


def max_rate_within_slo(is_met: Callable[[float], bool], guess: float, rel_tol: float = 0.04,
                        max_probes: int = 14) -> RateSearch:
    """Brackets the SLO boundary from `guess` by factors of 1.5, then bisects it geometrically.

    `is_met(rate)` runs the cluster at `rate` and says whether every SLO held. Assumes a lower
    rate never misses when a higher one meets (true up to simulation noise).
    """
    if not guess > 0:
        raise ValueError(f"the starting rate must be > 0, got {guess}")
    probes: list[tuple[float, bool]] = []

    def probe(rate: float) -> bool:
        ok = is_met(rate)
        probes.append((rate, ok))
        return ok

    low, high, rate = 0.0, float("inf"), guess
    while (low == 0.0 or high == float("inf")) and len(probes) < max_probes:
        if probe(rate):
            low, rate = rate, rate * 1.5
        else:
            high, rate = rate, rate / 1.5
        if low and high < float("inf"):
            break
    while high / max(low, 1e-12) > 1 + rel_tol and len(probes) < max_probes and low > 0:
        middle = (low * high) ** 0.5
        if probe(middle):
            low = middle
        else:
            high = middle
    return RateSearch(low, high, probes)


@dataclass(slots=True)
class SplitSearch:
    """The best number of prefill machines, its rate, and the rate found for each split tried."""

    best_num_prefill: int
    best_rate: float
    rate_by_num_prefill: dict[int, float]


def best_split(rate_for_split: Callable[[int, float], float], start: int, low: int, high: int,
               guess: float) -> SplitSearch:
    """Hill-climbs the number of prefill machines in [low, high] from `start`.

    `rate_for_split(num_prefill, guess)` returns the highest rate that split sustains.
    """
    if not low <= start <= high:
        raise ValueError(f"start {start} outside [{low}, {high}]")
    rates = {start: rate_for_split(start, guess)}
    for step in (1, -1):
        current = start
        while low <= current + step <= high:
            nxt = current + step
            rates[nxt] = rate_for_split(nxt, rates[current] or guess)
            if rates[nxt] <= rates[current]:
                break
            current = nxt
        if current != start:
            break  # climbing up helped, so the other direction cannot
    best = max(rates, key=lambda n: (rates[n], -n))
    return SplitSearch(best, rates[best], dict(sorted(rates.items())))
