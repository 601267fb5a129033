"""RouteLLM's routing metrics: quality vs share of strong-model calls, APGR and CPT(x%).

A router score ranks prompts from hardest to easiest; sending the top `k` to the strong model and
the rest to the weak one gives quality(k/N) = mean correctness of that mix. PGR (performance gap
recovered) rescales quality so that all-weak is 0 and all-strong is 1. APGR is the area under
PGR over the share of strong calls in [0, 1] (random routing: 0.5); CPT(x%) is the smallest share
of strong calls whose PGR reaches x%.

Ties in the score are ranked in expected order: inside a group of equal scores the curve is the
straight line a random tie-break gives on average. So a constant score is exactly random routing
(APGR 0.5), and no router gains from the order its ties happen to come in. The curve is computed
at every group boundary, and APGR is the exact area of that piecewise-linear curve (RouteLLM's
evaluate.py samples it at 10 thresholds; the full curve is its limit).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(slots=True, frozen=True)
class QualityCurve:
    """Quality of routing the hardest share to the strong model, at each score-group boundary."""

    share_strong: np.ndarray  # [P] in [0, 1], increasing, from 0 to 1
    quality: np.ndarray       # [P] mean correctness at that share
    weak_quality: float       # everything to the weak model
    strong_quality: float     # everything to the strong model

    @property
    def pgr(self) -> np.ndarray:
        """[P] performance gap recovered at each point."""
        return (self.quality - self.weak_quality) / (self.strong_quality - self.weak_quality)


@dataclass(slots=True, frozen=True)
class RoutingMetrics:
    """APGR and call-performance thresholds of one router (CPT as a share in [0, 1])."""

    apgr: float
    cpt50: float
    cpt80: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON output."""
        return asdict(self)


def quality_curve(scores: np.ndarray, weak_correct: np.ndarray,
                  strong_correct: np.ndarray) -> QualityCurve:
    """The quality curve of routing by `scores` (higher = harder = strong model first)."""
    scores = np.asarray(scores, dtype=np.float64)
    weak = np.asarray(weak_correct, dtype=np.float64)
    strong = np.asarray(strong_correct, dtype=np.float64)
    num_rows = scores.shape[0]
    if num_rows == 0 or weak.shape != (num_rows,) or strong.shape != (num_rows,):
        raise ValueError("quality_curve: scores, weak_correct and strong_correct need one equal, "
                         "non-zero length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("quality_curve: scores contain NaN or infinity")
    weak_quality = float(weak.mean())
    strong_quality = float(strong.mean())
    if strong_quality == weak_quality:
        raise ValueError("quality_curve: the strong and weak model have the same accuracy "
                         f"({strong_quality:.4f}), so the performance gap is zero")
    order = np.argsort(-scores, kind="stable")
    gain = (strong - weak)[order]
    sorted_scores = scores[order]
    # Indices where a new score group starts; the curve is exact at these boundaries only.
    boundaries = np.flatnonzero(np.diff(sorted_scores) != 0) + 1
    cut = np.concatenate([[0], boundaries, [num_rows]])
    cumulative_gain = np.concatenate([[0.0], np.cumsum(gain)])[cut]
    quality = weak_quality + cumulative_gain / num_rows
    return QualityCurve(cut / num_rows, quality, weak_quality, strong_quality)


def apgr(curve: QualityCurve) -> float:
    """Area under PGR over the share of strong calls (trapezoid rule, exact on this curve)."""
    pgr = curve.pgr
    widths = np.diff(curve.share_strong)
    return float(np.sum(widths * (pgr[1:] + pgr[:-1]) / 2.0))


def cpt(curve: QualityCurve, target_pgr: float) -> float:
    """Smallest share of strong calls at which PGR reaches `target_pgr` (linear in between)."""
    if not 0.0 <= target_pgr <= 1.0:
        raise ValueError(f"cpt: target_pgr must be in [0, 1], got {target_pgr}")
    pgr = curve.pgr
    reached = np.flatnonzero(pgr >= target_pgr - 1e-12)
    first = int(reached[0])  # PGR is exactly 1 at share 1, so some point reaches any target
    if first == 0:
        return 0.0
    x0, x1 = curve.share_strong[first - 1], curve.share_strong[first]
    y0, y1 = pgr[first - 1], pgr[first]
    return float(x0 + (target_pgr - y0) * (x1 - x0) / (y1 - y0))


def routing_metrics(scores: np.ndarray, weak_correct: np.ndarray,
                    strong_correct: np.ndarray) -> RoutingMetrics:
    """APGR, CPT(50%) and CPT(80%) of routing by `scores`."""
    curve = quality_curve(scores, weak_correct, strong_correct)
    return RoutingMetrics(apgr=apgr(curve), cpt50=cpt(curve, 0.5), cpt80=cpt(curve, 0.8))


def oracle_scores(weak_correct: np.ndarray, strong_correct: np.ndarray) -> np.ndarray:
    """The best possible router: strong-only-right first, then ties, weak-only-right last."""
    return np.asarray(strong_correct, dtype=np.float64) - np.asarray(weak_correct, dtype=np.float64)


def random_scores(num_rows: int, seed: int) -> np.ndarray:
    """A seeded random router's scores."""
    return np.random.default_rng(seed).random(num_rows)


def random_routing_metrics(weak_correct: np.ndarray, strong_correct: np.ndarray,
                           num_draws: int = 100, seed: int = 0) -> tuple[RoutingMetrics, RoutingMetrics]:
    """Mean and 95% half-width (1.96 standard deviations) of seeded random routers' metrics."""
    draws = [routing_metrics(random_scores(len(weak_correct), seed + i), weak_correct, strong_correct)
             for i in range(num_draws)]
    table = np.array([[d.apgr, d.cpt50, d.cpt80] for d in draws])
    mean, spread = table.mean(axis=0), 1.96 * table.std(axis=0)
    return RoutingMetrics(*map(float, mean)), RoutingMetrics(*map(float, spread))
