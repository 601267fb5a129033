"""The `features` estimator: cheap prompt features and a trained linear head, no model at all."""

from __future__ import annotations

import pathlib

import numpy as np

from router.difficulty.base import check_prompts, read_manifest, write_manifest
from router.difficulty.data import RoutingDataset
from router.difficulty.features import NUM_FEATURES, features_matrix
from router.difficulty.heads import LinearHead, Target, load_arrays, save_arrays, target_labels

ARRAYS_FILE = "head.safetensors"


class FeatureEstimator:
    """Difficulty from length, structure, math, question form and hashed words, in microseconds."""

    name = "features"

    def __init__(self, target: Target = Target.GAIN, regularization: float = 0.05,
                 head: LinearHead | None = None) -> None:
        if regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {regularization}")
        self.target = Target(target)
        self.regularization = regularization
        self.head = head

    def fit(self, dataset: RoutingDataset) -> FeatureEstimator:
        """Trains the head on `dataset`'s prompts and target labels."""
        labels = target_labels(self.target, dataset.weak_correct, dataset.strong_correct)
        self.head = LinearHead.fit(features_matrix(dataset.prompts), labels, self.regularization)
        return self

    def score(self, prompts: list[str]) -> np.ndarray:
        """[N] difficulty in [0, 1] (training-set percentile)."""
        check_prompts(prompts)
        return self._trained_head().scores(features_matrix(prompts))

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes `estimator.json` and the head's arrays."""
        head = self._trained_head()
        folder = write_manifest(directory, self.name, {
            "target": self.target.value, "regularization": self.regularization,
            "num_features": NUM_FEATURES})
        save_arrays(folder / ARRAYS_FILE, head.arrays("head."))

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> FeatureEstimator:
        """Rebuilds an estimator written by `save`."""
        settings = read_manifest(directory, cls.name)
        if settings.get("num_features") != NUM_FEATURES:
            raise ValueError(f"{directory}: saved with {settings.get('num_features')} features, "
                             f"this version computes {NUM_FEATURES}")
        head = LinearHead.from_arrays(load_arrays(pathlib.Path(directory) / ARRAYS_FILE), "head.")
        return cls(Target(settings["target"]), float(settings["regularization"]), head)

    def _trained_head(self) -> LinearHead:
        if self.head is None:
            raise ValueError("the features estimator is not trained: call fit() or load()")
        return self.head
