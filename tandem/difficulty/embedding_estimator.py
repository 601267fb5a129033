"""The `embedding` estimator: all-MiniLM-L6-v2 sentence embeddings and a trained logistic head.

Inputs of the head, per prompt: the hand-made prompt features (features.py), the word-based
domain prior (domain_prior.py, when the training data has several domains) and two
similarity-weighted neighbour features over the MiniLM embeddings (neighbours.py): the mean gain
and the mean domain prior of the 30 most similar training prompts. On RouteLLM's MMLU data the
embedding helps most through its neighbours; fed raw into the head its 384 dimensions overfit.

The MiniLM weights are not saved with the estimator; the manifest records their fingerprint and
loading checks it. Serving encodes prompts with a `MiniLMEncoder`; training and evaluation pass a
cached embedder (embedding_cache.py) instead.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from tandem.difficulty.base import check_prompts, read_manifest, write_manifest
from tandem.difficulty.domain_prior import (cross_fitted_prior, fit_word_prior,
                                            smoothed_domain_means)
from tandem.difficulty.features import HAND_FEATURE_NAMES, NUM_FEATURES, features_matrix
from tandem.difficulty.heads import LinearHead, Target, load_arrays, save_arrays, target_labels
from tandem.difficulty.neighbours import NeighbourTable

if TYPE_CHECKING:
    from tandem.difficulty.training.data import RoutingDataset

ARRAYS_FILE = "heads.safetensors"
NUM_HAND = len(HAND_FEATURE_NAMES)
Embedder = Callable[[Sequence[str]], np.ndarray]


class EmbeddingEstimator:
    """Difficulty from MiniLM neighbours, a word-based domain prior and prompt features."""

    name = "embedding"

    def __init__(self, target: Target = Target.GAIN, regularization: float = 0.05,
                 num_neighbours: int = 30, embedder: Embedder | None = None) -> None:
        if regularization <= 0 or num_neighbours < 1:
            raise ValueError(f"regularization ({regularization}) must be > 0 and num_neighbours "
                             f"({num_neighbours}) >= 1")
        self.target = Target(target)
        self.regularization = regularization
        self.num_neighbours = num_neighbours
        self.head: LinearHead | None = None
        self.prior_head: LinearHead | None = None
        self.neighbours: NeighbourTable | None = None
        self.fingerprint: str | None = None
        self._embedder = embedder

    def fit(self, dataset: RoutingDataset) -> EmbeddingEstimator:
        """Trains the domain prior (if several domains), the neighbour table and the head."""
        if len(dataset) <= self.num_neighbours:
            raise ValueError(f"the embedding estimator needs more than {self.num_neighbours} "
                             f"training prompts, got {len(dataset)}")
        labels = target_labels(self.target, dataset.weak_correct, dataset.strong_correct)
        gain = dataset.gain.astype(np.float64)
        features = features_matrix(dataset.prompts)
        words = features[:, NUM_HAND:]
        names, domain_index = np.unique(np.asarray(dataset.domains, dtype=object),
                                        return_inverse=True)
        self.prior_head = None
        inputs = [features[:, :NUM_HAND]]
        if names.size > 1:
            # The prior is the domain's mean gain, whatever head target is trained.
            self.prior_head = fit_word_prior(words, dataset.domains, gain)
            inputs.append(cross_fitted_prior(fit_word_prior, words, dataset.domains, gain)[:, None])
        domain_prior = smoothed_domain_means(domain_index, gain, names.size, smoothing=20.0)
        embeddings = self._embed(dataset.prompts)
        self.neighbours = NeighbourTable(embeddings, gain, domain_prior[domain_index],
                                         self.num_neighbours)
        inputs.append(self._neighbour_features(embeddings, exclude_duplicates=True))
        self.head = LinearHead.fit(np.hstack(inputs), labels, self.regularization)
        return self

    def score(self, prompts: list[str]) -> np.ndarray:
        """[N] difficulty in [0, 1] (training-set percentile)."""
        check_prompts(prompts)
        head = self._trained_head()
        features = features_matrix(prompts)
        inputs = [features[:, :NUM_HAND]]
        if self.prior_head is not None:
            inputs.append(self.prior_head.raw_scores(features[:, NUM_HAND:])[:, None])
        inputs.append(self._neighbour_features(self._embed(prompts), exclude_duplicates=False))
        return head.scores(np.hstack(inputs))

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes `estimator.json` and the arrays (not the MiniLM weights)."""
        arrays = self._trained_head().arrays("head.")
        arrays.update(self.neighbours.arrays("neighbours."))
        if self.prior_head is not None:
            arrays.update(self.prior_head.arrays("prior."))
        folder = write_manifest(directory, self.name, {
            "target": self.target.value, "regularization": self.regularization,
            "num_neighbours": self.num_neighbours, "domain_prior": self.prior_head is not None,
            "minilm_fingerprint": self._fingerprint(), "num_features": NUM_FEATURES})
        save_arrays(folder / ARRAYS_FILE, arrays)

    @classmethod
    def load(cls, directory: str | pathlib.Path,
             embedder: Embedder | None = None) -> EmbeddingEstimator:
        """Rebuilds an estimator written by `save`; checks the MiniLM weights are the same.

        Without `embedder`, the MiniLM encoder is built here, so that a router pays its start-up
        (and learns of a missing package) when it loads the estimator, not on the first request.
        """
        from tandem.difficulty.minilm import MiniLMEncoder, minilm_model_dir, weights_fingerprint

        settings = read_manifest(directory, cls.name)
        if settings.get("num_features") != NUM_FEATURES:
            raise ValueError(f"{directory}: saved with {settings.get('num_features')} prompt "
                             f"features, this version computes {NUM_FEATURES}")
        installed = weights_fingerprint(minilm_model_dir())
        if settings.get("minilm_fingerprint") != installed:
            raise ValueError(f"{directory}: trained on MiniLM weights "
                             f"{settings.get('minilm_fingerprint')}, but the installed weights are "
                             f"{installed}")
        arrays = load_arrays(pathlib.Path(directory) / ARRAYS_FILE)
        estimator = cls(Target(settings["target"]), float(settings["regularization"]),
                        int(settings["num_neighbours"]), embedder or MiniLMEncoder().encode)
        estimator.head = LinearHead.from_arrays(arrays, "head.")
        estimator.neighbours = NeighbourTable.from_arrays(arrays, "neighbours.",
                                                          estimator.num_neighbours)
        if settings["domain_prior"]:
            estimator.prior_head = LinearHead.from_arrays(arrays, "prior.")
        estimator.fingerprint = installed
        return estimator

    def _neighbour_features(self, embeddings: np.ndarray, exclude_duplicates: bool) -> np.ndarray:
        features = self.neighbours.features(embeddings, exclude_duplicates)
        # With one domain the neighbours' domain prior is a constant: only their gain is kept.
        return features if self.prior_head is not None else features[:, :1]

    def _embed(self, prompts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            from tandem.difficulty.minilm import MiniLMEncoder

            self._embedder = MiniLMEncoder().encode
        return np.asarray(self._embedder(prompts), dtype=np.float32)

    def _fingerprint(self) -> str:
        if self.fingerprint is None:
            from tandem.difficulty.minilm import minilm_model_dir, weights_fingerprint

            self.fingerprint = weights_fingerprint(minilm_model_dir())
        return self.fingerprint

    def _trained_head(self) -> LinearHead:
        if self.head is None or self.neighbours is None:
            raise ValueError("the embedding estimator is not trained: call fit() or load()")
        return self.head
