"""RouteLLM's routing metrics on cases small enough to compute by hand."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

from tandem.difficulty.heads import calibrate, percentile_table
from tandem.difficulty.training.crossval import (Split, assign_domain_folds, assign_folds,
                                                 cross_validate)
from tandem.difficulty.training.data import RoutingDataset
from tandem.difficulty.training.metrics import (apgr, cpt, oracle_scores, quality_curve,
                                                random_routing_metrics, routing_metrics)

# Four prompts: the weak model gets 0 and 3 right, the strong one 0, 1 and 3.
WEAK = np.array([True, False, False, True])
STRONG = np.array([True, True, False, True])


def test_a_hand_computed_curve():
    # Prompt 1 (the only one the strong model wins) is ranked first, then 3, 2, 0.
    curve = quality_curve(np.array([0.1, 0.9, 0.2, 0.3]), WEAK, STRONG)
    assert curve.weak_quality == 0.5 and curve.strong_quality == 0.75
    np.testing.assert_allclose(curve.share_strong, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.pgr, [0, 1, 1, 1, 1])
    # Area: the ramp 0 -> 1 over the first quarter (0.125) plus 1 over the rest (0.75).
    assert apgr(curve) == pytest.approx(0.875)
    assert cpt(curve, 0.5) == pytest.approx(0.125)
    assert cpt(curve, 0.8) == pytest.approx(0.2)


def test_the_worst_order_is_below_the_diagonal():
    metrics = routing_metrics(np.array([0.9, 0.1, 0.8, 0.7]), WEAK, STRONG)
    # PGR stays 0 until the last quarter: area 0.125, and 50% of the gap needs 87.5% of calls.
    assert metrics.apgr == pytest.approx(0.125)
    assert metrics.cpt50 == pytest.approx(0.875)


def test_a_constant_score_is_exactly_random_routing():
    rng = np.random.default_rng(3)
    weak, strong = rng.random(200) < 0.5, rng.random(200) < 0.8
    metrics = routing_metrics(np.full(200, 0.4), weak, strong)
    assert metrics.apgr == pytest.approx(0.5)
    assert metrics.cpt50 == pytest.approx(0.5)
    assert metrics.cpt80 == pytest.approx(0.8)


def test_random_routing_averages_one_half():
    rng = np.random.default_rng(0)
    weak = rng.random(2000) < 0.6
    strong = weak | (rng.random(2000) < 0.5)
    mean, spread = random_routing_metrics(weak, strong, num_draws=50, seed=1)
    assert abs(mean.apgr - 0.5) < 0.02
    assert abs(mean.cpt50 - 0.5) < 0.03 and abs(mean.cpt80 - 0.8) < 0.03
    assert 0 < spread.apgr < 0.1


def test_the_oracle_beats_every_ordering():
    weak = np.array([True, False, True, False, True, False])
    strong = np.array([True, True, False, False, True, True])
    best = routing_metrics(oracle_scores(weak, strong), weak, strong)
    for order in itertools.permutations(range(6)):
        scores = np.array(order, dtype=np.float64)
        metrics = routing_metrics(scores, weak, strong)
        assert metrics.apgr <= best.apgr + 1e-12
        assert metrics.cpt50 >= best.cpt50 - 1e-12


def test_a_perfect_router_recovers_the_whole_gap_at_the_oracle_share():
    rng = np.random.default_rng(7)
    weak = rng.random(1000) < 0.6
    strong = weak | (rng.random(1000) < 0.5)  # the strong model is never worse: no -1 gains
    share_needed = float(np.mean(strong & ~weak))
    curve = quality_curve(oracle_scores(weak, strong), weak, strong)
    assert cpt(curve, 1.0) == pytest.approx(share_needed)
    at_share = np.interp(share_needed, curve.share_strong, curve.pgr)
    assert at_share == pytest.approx(1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same accuracy"):
        routing_metrics(np.arange(4.0), WEAK, WEAK)
    with pytest.raises(ValueError, match="NaN"):
        routing_metrics(np.array([0.1, np.nan, 0.2, 0.3]), WEAK, STRONG)
    with pytest.raises(ValueError, match="equal"):
        routing_metrics(np.arange(3.0), WEAK, STRONG)
    with pytest.raises(ValueError, match="target_pgr"):
        cpt(quality_curve(np.arange(4.0), WEAK, STRONG), 1.5)


def test_calibration_is_monotone_and_never_overflows():
    points, levels = percentile_table(np.random.default_rng(0).normal(size=500))
    raw = np.array([-1e6, -3.0, -0.5, 0.0, 0.5, 3.0, 1e6])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrated = calibrate(raw, points, levels)
    assert np.all(np.diff(calibrated) >= 0) and np.all((calibrated >= 0) & (calibrated <= 1))
    assert calibrate(np.array([0.0]), points, levels)[0] == pytest.approx(0.5, abs=0.05)


def test_folds_are_seeded_stratified_and_keep_duplicates_together():
    prompts = [f"q{i % 90}" for i in range(100)]  # ten prompts appear twice
    rng = np.random.default_rng(0)
    dataset = RoutingDataset(prompts, rng.random(100) < 0.5, rng.random(100) < 0.8,
                             ["a" if i % 2 else "b" for i in range(100)])
    folds = assign_folds(dataset, 5, seed=4)
    np.testing.assert_array_equal(folds, assign_folds(dataset, 5, seed=4))
    assert not np.array_equal(folds, assign_folds(dataset, 5, seed=5))
    for i in range(10):
        assert folds[i] == folds[i + 90]
    assert np.bincount(folds).min() >= 18


class RecordingEstimator:
    """Scores by prompt length and remembers what each fold trained on and scored."""

    name = "recording"
    trained: list[set[str]] = []
    trained_prompts: list[set[str]] = []

    def fit(self, dataset):
        RecordingEstimator.trained.append(set(dataset.domains))
        RecordingEstimator.trained_prompts.append(set(dataset.prompts))
        return self

    def score(self, prompts):
        return np.array([len(p) / 100 for p in prompts])


def test_domain_held_out_folds_never_train_on_a_tested_domain():
    domains = [f"subject_{i % 12}" for i in range(240)]
    prompts = [f"{d} question {i}" for i, d in enumerate(domains)]
    prompts[5] = prompts[6]  # one prompt text in two subjects (5 % 12 != 6 % 12)
    rng = np.random.default_rng(1)
    dataset = RoutingDataset(prompts, rng.random(240) < 0.6, rng.random(240) < 0.8, domains)
    folds = assign_domain_folds(dataset, 4, seed=3)
    np.testing.assert_array_equal(folds, assign_domain_folds(dataset, 4, seed=3))
    for domain in set(domains):
        assert len({folds[i] for i, d in enumerate(domains) if d == domain}) == 1
    assert sorted(np.unique(folds)) == [0, 1, 2, 3] and np.bincount(folds).min() >= 40
    RecordingEstimator.trained, RecordingEstimator.trained_prompts = [], []
    validation = cross_validate(RecordingEstimator, dataset, 4, seed=3, split=Split.DOMAIN)
    for fold, (trained, trained_prompts) in enumerate(zip(RecordingEstimator.trained,
                                                          RecordingEstimator.trained_prompts)):
        tested = {i for i in range(240) if folds[i] == fold}
        assert trained.isdisjoint({domains[i] for i in tested})
        assert trained_prompts.isdisjoint({prompts[i] for i in tested})
    assert len(validation.per_fold) == 4
    with pytest.raises(ValueError, match="folds <= domains"):
        assign_domain_folds(dataset, 13, seed=0)
