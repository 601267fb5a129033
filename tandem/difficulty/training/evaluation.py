"""Evaluates a difficulty estimator as RouteLLM does, beside random routing and the oracle.

The estimator is cross-validated (crossval.py), in-domain or domain-held-out: its out-of-fold
scores route every prompt once.
Random routing is the mean (and 95% spread) of seeded random routers; the oracle sends exactly
the prompts that only the strong model answers right. All three report APGR, CPT(50%) and
CPT(80%) (metrics.py); the quality curves are kept for plotting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.difficulty.base import TrainableEstimator
from tandem.difficulty.training.crossval import Split, cross_validate
from tandem.difficulty.training.data import RoutingDataset
from tandem.difficulty.training.metrics import (QualityCurve, RoutingMetrics, oracle_scores,
                                                quality_curve, random_routing_metrics,
                                                routing_metrics)

NUM_RANDOM_DRAWS = 100


@dataclass(slots=True)
class Evaluation:
    """Metrics and quality curves of an estimator, random routing and the oracle on one dataset."""

    estimator: str
    hidden_states: str | None  # where a probe's hidden states came from; None for other estimators
    num_rows: int
    num_domains: int
    num_folds: int
    split: Split
    seed: int
    weak_accuracy: float
    strong_accuracy: float
    estimator_metrics: RoutingMetrics
    per_fold: list[RoutingMetrics]
    random_metrics: RoutingMetrics
    random_half_width: RoutingMetrics
    oracle_metrics: RoutingMetrics
    seconds: float
    curves: dict[str, QualityCurve] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (curves left out)."""
        return {
            "estimator": self.estimator, "hidden_states": self.hidden_states,
            "num_rows": self.num_rows, "num_domains": self.num_domains,
            "num_folds": self.num_folds, "split": self.split.value, "seed": self.seed,
            "weak_accuracy": self.weak_accuracy, "strong_accuracy": self.strong_accuracy,
            "metrics": {
                self.estimator: self.estimator_metrics.as_dict(),
                "random": self.random_metrics.as_dict(),
                "oracle": self.oracle_metrics.as_dict(),
            },
            "random_95pct_half_width": self.random_half_width.as_dict(),
            "random_num_draws": NUM_RANDOM_DRAWS,
            "per_fold": [m.as_dict() for m in self.per_fold],
            "seconds": round(self.seconds, 2),
        }


def evaluate(make_estimator: Callable[[], TrainableEstimator], dataset: RoutingDataset,
             num_folds: int = 5, seed: int = 0, hidden_states: str | None = None,
             split: Split = Split.PROMPT) -> Evaluation:
    """K-fold cross-validates the estimator and compares it with random routing and the oracle."""
    started = time.perf_counter()
    weak, strong = dataset.weak_correct, dataset.strong_correct
    validation = cross_validate(make_estimator, dataset, num_folds, seed, Split(split))
    random_mean, random_spread = random_routing_metrics(weak, strong, NUM_RANDOM_DRAWS, seed)
    oracle = oracle_scores(weak, strong)
    name = make_estimator().name
    curves = {name: quality_curve(validation.scores, weak, strong),
              "random": quality_curve(np.zeros(len(dataset)), weak, strong),
              "oracle": quality_curve(oracle, weak, strong)}
    return Evaluation(
        estimator=name, hidden_states=hidden_states, num_rows=len(dataset),
        num_domains=len(set(dataset.domains)), num_folds=num_folds, split=Split(split), seed=seed,
        weak_accuracy=float(weak.mean()), strong_accuracy=float(strong.mean()),
        estimator_metrics=validation.pooled, per_fold=validation.per_fold,
        random_metrics=random_mean, random_half_width=random_spread,
        oracle_metrics=routing_metrics(oracle, weak, strong),
        seconds=time.perf_counter() - started, curves=curves)
