"""The `features` estimator: cheap prompt features and a trained logistic head, no neural model.

Inputs of the head, per prompt: the hand-made features (length, structure, code, math, question
words, options, domain cue words; features.py) and, when the training data has several domains,
the learned domain prior: naive Bayes over the hashed words says which domain the prompt reads
like, times that domain's mean gain (domain_prior.py). With a single domain the hashed words go
into the head directly instead. The manifest records which inputs the head was trained on.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import numpy as np

from tandem.difficulty.base import check_prompts, read_manifest, write_manifest
from tandem.difficulty.domain_prior import cross_fitted_prior, fit_word_prior
from tandem.difficulty.features import HAND_FEATURE_NAMES, NUM_FEATURES, features_matrix
from tandem.difficulty.heads import LinearHead, Target, load_arrays, save_arrays, target_labels

if TYPE_CHECKING:
    from tandem.difficulty.training.data import RoutingDataset

ARRAYS_FILE = "head.safetensors"
NUM_HAND = len(HAND_FEATURE_NAMES)


class FeatureEstimator:
    """Difficulty from length, structure, math, question form and a word-based domain prior."""

    name = "features"

    def __init__(self, target: Target = Target.GAIN, regularization: float = 0.05,
                 use_domain_prior: bool = True) -> None:
        if regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {regularization}")
        self.target = Target(target)
        self.regularization = regularization
        self.use_domain_prior = use_domain_prior
        self.head: LinearHead | None = None
        self.prior_head: LinearHead | None = None

    def fit(self, dataset: RoutingDataset) -> FeatureEstimator:
        """Trains the domain prior (if several domains) and the head on `dataset`."""
        labels = target_labels(self.target, dataset.weak_correct, dataset.strong_correct)
        features = features_matrix(dataset.prompts)
        hand, words = features[:, :NUM_HAND], features[:, NUM_HAND:]
        self.prior_head = None
        if self.use_domain_prior and len(set(dataset.domains)) > 1:
            # The prior is the domain's mean gain, whatever head target is trained.
            gain = dataset.gain.astype(np.float64)
            self.prior_head = fit_word_prior(words, dataset.domains, gain)
            prior = cross_fitted_prior(fit_word_prior, words, dataset.domains, gain)
            inputs = np.hstack([hand, prior[:, None]])
        else:
            inputs = features
        self.head = LinearHead.fit(inputs, labels, self.regularization)
        return self

    def score(self, prompts: list[str]) -> np.ndarray:
        """[N] difficulty in [0, 1] (training-set percentile)."""
        check_prompts(prompts)
        return self._trained_head().scores(self._inputs(features_matrix(prompts)))

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes `estimator.json` and the heads' arrays."""
        arrays = self._trained_head().arrays("head.")
        if self.prior_head is not None:
            arrays.update(self.prior_head.arrays("prior."))
        folder = write_manifest(directory, self.name, {
            "target": self.target.value, "regularization": self.regularization,
            "domain_prior": self.prior_head is not None, "num_features": NUM_FEATURES})
        save_arrays(folder / ARRAYS_FILE, arrays)

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> FeatureEstimator:
        """Rebuilds an estimator written by `save`."""
        settings = read_manifest(directory, cls.name)
        if settings.get("num_features") != NUM_FEATURES:
            raise ValueError(f"{directory}: saved with {settings.get('num_features')} features, "
                             f"this version computes {NUM_FEATURES}")
        arrays = load_arrays(pathlib.Path(directory) / ARRAYS_FILE)
        estimator = cls(Target(settings["target"]), float(settings["regularization"]),
                        bool(settings["domain_prior"]))
        estimator.head = LinearHead.from_arrays(arrays, "head.")
        if settings["domain_prior"]:
            estimator.prior_head = LinearHead.from_arrays(arrays, "prior.")
        return estimator

    def _inputs(self, features: np.ndarray) -> np.ndarray:
        if self.prior_head is None:
            return features
        prior = self.prior_head.raw_scores(features[:, NUM_HAND:])
        return np.hstack([features[:, :NUM_HAND], prior[:, None]])

    def _trained_head(self) -> LinearHead:
        if self.head is None:
            raise ValueError("the features estimator is not trained: call fit() or load()")
        return self.head
