"""The prompt-level estimators: they learn which prompts need the strong model, and round-trip."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.difficulty.base import DifficultyEstimator, load_estimator
from tandem.difficulty.embedding_estimator import EmbeddingEstimator
from tandem.difficulty.feature_estimator import FeatureEstimator
from tandem.difficulty.training.data import RoutingDataset
from tandem.difficulty.training.metrics import routing_metrics

SUBJECTS = ["Lisbon", "Kyoto", "Cairo", "Lima", "Oslo", "Quito", "Accra", "Hanoi"]


def synthetic_dataset(num_rows: int, seed: int) -> RoutingDataset:
    """Two domains: algebra prompts that only the strong model solves, and geography both do."""
    rng = np.random.default_rng(seed)
    prompts, weak, strong, domains = [], [], [], []
    for row in range(num_rows):
        k = int(rng.integers(2, 9))
        if row % 2:
            prompts.append(f"Let f(x) = x^{k} + {k}x. Compute the derivative f'({k}) and solve "
                           f"f(x) = {k * 3} for the integer x.\nA. {k}\nB. {k + 1}\nC. {2 * k}\n"
                           f"D. {k * k}\nAnswer:")
            weak.append(rng.random() < 0.1)
            strong.append(rng.random() < 0.95)
            domains.append("algebra")
        else:
            city = SUBJECTS[row % len(SUBJECTS)]
            prompts.append(f"Which country is {city} in?\nA. one\nB. two\nC. three\nD. four\nAnswer:")
            weak.append(rng.random() < 0.95)
            strong.append(rng.random() < 0.95)
            domains.append("geography")
    return RoutingDataset(prompts, np.array(weak), np.array(strong), domains)


def check_round_trip(estimator, folder, test: RoutingDataset, **load_kwargs) -> None:
    scores = estimator.score(test.prompts)
    assert scores.shape == (len(test),) and np.all((scores >= 0) & (scores <= 1))
    # Within a domain the labels are coin flips: ranking algebra first is the best one can do.
    is_algebra = np.array([domain == "algebra" for domain in test.domains], dtype=np.float64)
    best = routing_metrics(is_algebra, test.weak_correct, test.strong_correct).apgr
    assert routing_metrics(scores, test.weak_correct, test.strong_correct).apgr > best - 0.05
    assert best > 0.7
    estimator.save(folder)
    loaded = load_estimator(folder) if not load_kwargs else type(estimator).load(folder, **load_kwargs)
    assert isinstance(loaded, DifficultyEstimator) and loaded.name == estimator.name
    np.testing.assert_array_equal(loaded.score(test.prompts), scores)


def test_the_features_estimator_learns_and_round_trips(tmp_path):
    train, test = synthetic_dataset(200, seed=0), synthetic_dataset(60, seed=1)
    estimator = FeatureEstimator().fit(train)
    assert estimator.prior_head is not None  # two domains: the word prior is learned
    check_round_trip(estimator, tmp_path / "features", test)


def test_with_one_domain_the_features_estimator_reads_the_words_directly(tmp_path):
    train = synthetic_dataset(120, seed=2)
    one_domain = RoutingDataset(train.prompts, train.weak_correct, train.strong_correct,
                                ["all"] * len(train))
    estimator = FeatureEstimator().fit(one_domain)
    assert estimator.prior_head is None
    check_round_trip(estimator, tmp_path / "one", synthetic_dataset(60, seed=3))


def test_the_embedding_estimator_learns_and_round_trips_with_minilm(tmp_path):
    import torch

    from tandem.difficulty.minilm import MiniLMEncoder

    torch.set_num_threads(2)
    encoder = MiniLMEncoder()
    train, test = synthetic_dataset(60, seed=4), synthetic_dataset(60, seed=5)
    estimator = EmbeddingEstimator(num_neighbours=5, embedder=encoder.encode).fit(train)
    check_round_trip(estimator, tmp_path / "embedding", test, embedder=encoder.encode)
    manifest = (tmp_path / "embedding" / "estimator.json").read_text()
    assert '"minilm_fingerprint"' in manifest and '"num_neighbours": 5' in manifest


def test_minilm_embeddings_are_sentence_transformers_vectors():
    import torch

    from tandem.difficulty.minilm import EMBEDDING_DIM, MiniLMEncoder

    torch.set_num_threads(2)
    vectors = MiniLMEncoder().encode(["A cat sits on the mat.", "A kitten rests on a rug.",
                                      "Compute the determinant of a 3x3 matrix."])
    assert vectors.shape == (3, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_bad_inputs_and_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not trained"):
        FeatureEstimator().score(["x"])
    estimator = FeatureEstimator().fit(synthetic_dataset(40, seed=6))
    with pytest.raises(ValueError, match="list of prompt strings"):
        estimator.score("one string")
    with pytest.raises(ValueError, match="no estimator.json"):
        load_estimator(tmp_path)
    estimator.save(tmp_path / "saved")
    manifest = tmp_path / "saved" / "estimator.json"
    manifest.write_text(manifest.read_text().replace('"features"', '"nonesuch"'))
    with pytest.raises(ValueError, match="unknown difficulty estimator 'nonesuch'"):
        load_estimator(tmp_path / "saved")
    with pytest.raises(ValueError, match="more than 30 training prompts"):
        EmbeddingEstimator(embedder=lambda p: np.zeros((len(p), 4))).fit(synthetic_dataset(20, 7))
