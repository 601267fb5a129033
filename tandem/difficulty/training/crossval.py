"""Seeded K-fold cross-validation of a difficulty estimator, in-domain or domain-held-out.

Two ways to split (`Split`):
- `prompt` (in-domain): folds are assigned per distinct prompt text (duplicate prompts always
  share a fold), stratified by (domain, gain class): inside each stratum the prompts are ordered
  by a seeded hash of their text and dealt out round-robin. Every domain is in every fold, so the
  estimator is tested on prompts like those it was trained on.
- `domain` (domain-held-out): whole domains (MMLU subjects) are assigned to folds by
  scikit-learn's GroupKFold (shuffled with the seed, balancing the folds' sizes), so no domain is
  both trained and tested on: the estimator is tested on prompts unlike its training data.
In both, a training row whose prompt text also occurs in the test fold is left out of training.
Each fold's estimator is trained on the other folds and scores its own fold; the out-of-fold
scores of all folds are evaluated together as one router (every fold's scores are percentiles of
its own training set, so they share a scale).
"""

from __future__ import annotations

import enum
import hashlib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tandem.difficulty.base import TrainableEstimator
from tandem.difficulty.training.data import RoutingDataset
from tandem.difficulty.training.metrics import RoutingMetrics, routing_metrics


class Split(str, enum.Enum):
    """How rows are split into folds (see the module docstring)."""

    PROMPT = "prompt"
    DOMAIN = "domain"


def assign_folds(dataset: RoutingDataset, num_folds: int, seed: int) -> np.ndarray:
    """[N] fold index in [0, num_folds) of each row; equal prompts get the same fold."""
    if num_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {num_folds}")
    groups: dict[str, list[int]] = defaultdict(list)
    for row, prompt in enumerate(dataset.prompts):
        groups[prompt].append(row)
    if len(groups) < num_folds:
        raise ValueError(f"{len(groups)} distinct prompts cannot fill {num_folds} folds")
    gain = dataset.gain
    strata: dict[tuple[str, int], list[str]] = defaultdict(list)
    for prompt, rows in groups.items():
        # A repeated prompt's stratum: its most common (domain, gain) among its rows.
        stratum = Counter((dataset.domains[r], int(gain[r])) for r in rows).most_common(1)[0][0]
        strata[stratum].append(prompt)
    folds = np.empty(len(dataset), dtype=np.int64)
    offset = 0
    for stratum in sorted(strata):
        members = sorted(strata[stratum], key=lambda p: _seeded_hash(seed, p))
        for position, prompt in enumerate(members):
            folds[groups[prompt]] = (offset + position) % num_folds
        # Carry the round-robin on, so that small strata do not all fill fold 0 first.
        offset += len(members)
    return folds


def assign_domain_folds(dataset: RoutingDataset, num_folds: int, seed: int) -> np.ndarray:
    """[N] fold index of each row; all rows of a domain share one fold."""
    from sklearn.model_selection import GroupKFold

    num_domains = len(set(dataset.domains))
    if num_folds < 2 or num_domains < num_folds:
        raise ValueError(f"domain-held-out cross-validation needs 2 <= folds <= domains, got "
                         f"{num_folds} folds and {num_domains} domains")
    folds = np.empty(len(dataset), dtype=np.int64)
    splitter = GroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(dataset.prompts, groups=dataset.domains)):
        folds[test] = fold
    return folds


def training_rows(dataset: RoutingDataset, folds: np.ndarray, fold: int) -> np.ndarray:
    """Rows outside `fold` whose prompt text does not also occur inside it."""
    tested = {dataset.prompts[i] for i in np.flatnonzero(folds == fold)}
    return np.array([i for i in np.flatnonzero(folds != fold) if dataset.prompts[i] not in tested],
                    dtype=np.int64)


@dataclass(slots=True)
class CrossValidation:
    """Out-of-fold scores and the metrics of the pooled router and of each fold."""

    scores: np.ndarray                  # [N] out-of-fold difficulty of every row
    folds: np.ndarray                   # [N] fold of every row
    pooled: RoutingMetrics              # metrics of all out-of-fold scores as one router
    per_fold: list[RoutingMetrics]      # metrics of each fold on its own


def cross_validate(make_estimator: Callable[[], TrainableEstimator], dataset: RoutingDataset,
                   num_folds: int = 5, seed: int = 0,
                   split: Split = Split.PROMPT) -> CrossValidation:
    """Trains `make_estimator()` on K-1 folds and scores the held-out fold, for every fold."""
    assign = assign_domain_folds if Split(split) is Split.DOMAIN else assign_folds
    folds = assign(dataset, num_folds, seed)
    scores = np.zeros(len(dataset), dtype=np.float64)
    per_fold = []
    for fold in range(num_folds):
        test = np.flatnonzero(folds == fold)
        train = training_rows(dataset, folds, fold)
        estimator = make_estimator().fit(dataset.subset(train))
        scores[test] = estimator.score([dataset.prompts[i] for i in test])
        per_fold.append(routing_metrics(scores[test], dataset.weak_correct[test],
                                        dataset.strong_correct[test]))
    pooled = routing_metrics(scores, dataset.weak_correct, dataset.strong_correct)
    return CrossValidation(scores, folds, pooled, per_fold)


def _seeded_hash(seed: int, prompt: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{prompt}".encode(), digest_size=8).digest()
