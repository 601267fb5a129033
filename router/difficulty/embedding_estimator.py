"""The `embedding` estimator: all-MiniLM-L6-v2 sentence embeddings and a trained linear head.

Inputs of the head, per prompt: the 384-d normalised embedding, the cheap hand-made prompt
features (features.py, without the hashed words), and, when trained with domain labels, the
learned domain prior (domain_prior.py). The MiniLM weights are not saved with the estimator; the
manifest records their fingerprint and loading checks it. Serving encodes prompts with a
`MiniLMEncoder`; training and evaluation pass a cached embedder (embedding_cache.py) instead.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from router.difficulty.base import check_prompts, read_manifest, write_manifest
from router.difficulty.data import RoutingDataset
from router.difficulty.domain_prior import cross_fitted_prior, fit_domain_prior
from router.difficulty.features import HAND_FEATURE_NAMES, features_matrix
from router.difficulty.heads import LinearHead, Target, load_arrays, save_arrays, target_labels

ARRAYS_FILE = "heads.safetensors"
Embedder = Callable[[Sequence[str]], np.ndarray]


class EmbeddingEstimator:
    """Difficulty from MiniLM embeddings (+ prompt features and a domain prior) via a linear head."""

    name = "embedding"

    def __init__(self, target: Target = Target.GAIN, regularization: float = 0.05,
                 use_domain_prior: bool = True, embedder: Embedder | None = None) -> None:
        if regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {regularization}")
        self.target = Target(target)
        self.regularization = regularization
        self.use_domain_prior = use_domain_prior
        self.head: LinearHead | None = None
        self.prior_head: LinearHead | None = None
        self.fingerprint: str | None = None
        self._embedder = embedder

    def fit(self, dataset: RoutingDataset) -> EmbeddingEstimator:
        """Trains the domain prior (if several domains) and the head on `dataset`."""
        labels = target_labels(self.target, dataset.weak_correct, dataset.strong_correct)
        embeddings = self._embed(dataset.prompts)
        inputs = [embeddings, _hand_features(dataset.prompts)]
        self.prior_head = None
        if self.use_domain_prior and len(set(dataset.domains)) > 1:
            # The prior is the domain's mean gain, whatever head target is trained.
            gain = dataset.gain.astype(np.float64)
            self.prior_head = fit_domain_prior(embeddings, dataset.domains, gain)
            inputs.append(cross_fitted_prior(embeddings, dataset.domains, gain)[:, None])
        self.head = LinearHead.fit(np.hstack(inputs), labels, self.regularization)
        return self

    def score(self, prompts: list[str]) -> np.ndarray:
        """[N] difficulty in [0, 1] (training-set percentile)."""
        check_prompts(prompts)
        head = self._trained_head()
        embeddings = self._embed(prompts)
        inputs = [embeddings, _hand_features(prompts)]
        if self.prior_head is not None:
            inputs.append(self.prior_head.raw_scores(embeddings)[:, None])
        return head.scores(np.hstack(inputs))

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes `estimator.json` and the heads' arrays (not the MiniLM weights)."""
        head = self._trained_head()
        arrays = head.arrays("head.")
        if self.prior_head is not None:
            arrays.update(self.prior_head.arrays("prior."))
        folder = write_manifest(directory, self.name, {
            "target": self.target.value, "regularization": self.regularization,
            "domain_prior": self.prior_head is not None, "minilm_fingerprint": self._fingerprint(),
            "num_hand_features": len(HAND_FEATURE_NAMES)})
        save_arrays(folder / ARRAYS_FILE, arrays)

    @classmethod
    def load(cls, directory: str | pathlib.Path, embedder: Embedder | None = None) -> EmbeddingEstimator:
        """Rebuilds an estimator written by `save`; checks the MiniLM weights are the same."""
        from router.difficulty.minilm import minilm_model_dir, weights_fingerprint

        settings = read_manifest(directory, cls.name)
        if settings.get("num_hand_features") != len(HAND_FEATURE_NAMES):
            raise ValueError(f"{directory}: saved with {settings.get('num_hand_features')} prompt "
                             f"features, this version computes {len(HAND_FEATURE_NAMES)}")
        installed = weights_fingerprint(minilm_model_dir())
        if settings.get("minilm_fingerprint") != installed:
            raise ValueError(f"{directory}: trained on MiniLM weights {settings.get('minilm_fingerprint')}"
                             f", but the installed weights are {installed}")
        arrays = load_arrays(pathlib.Path(directory) / ARRAYS_FILE)
        estimator = cls(Target(settings["target"]), float(settings["regularization"]),
                        bool(settings["domain_prior"]), embedder)
        estimator.head = LinearHead.from_arrays(arrays, "head.")
        if settings["domain_prior"]:
            estimator.prior_head = LinearHead.from_arrays(arrays, "prior.")
        estimator.fingerprint = installed
        return estimator

    def _embed(self, prompts: Sequence[str]) -> np.ndarray:
        if self._embedder is None:
            from router.difficulty.minilm import MiniLMEncoder

            self._embedder = MiniLMEncoder().encode
        return np.asarray(self._embedder(prompts), dtype=np.float64)

    def _fingerprint(self) -> str:
        if self.fingerprint is None:
            from router.difficulty.minilm import minilm_model_dir, weights_fingerprint

            self.fingerprint = weights_fingerprint(minilm_model_dir())
        return self.fingerprint

    def _trained_head(self) -> LinearHead:
        if self.head is None:
            raise ValueError("the embedding estimator is not trained: call fit() or load()")
        return self.head


def _hand_features(prompts: Sequence[str]) -> np.ndarray:
    return features_matrix(list(prompts))[:, :len(HAND_FEATURE_NAMES)]
