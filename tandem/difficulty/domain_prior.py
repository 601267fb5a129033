"""A learned per-domain prior: which domain a prompt reads like, times how hard that domain is.

Training rows carry a domain label (for RouteLLM's MMLU files, the subject: the file a row came
from). A classifier learns to recognise the domain from the prompt text; each domain's prior is
its smoothed mean training target (for MMLU, the mean gain of sending its prompts to the strong
model). At serving time only the prompt is needed: the prior feature is
sum_d P(domain d | prompt) * prior_d. The domain is thus in-distribution information read off the
prompt text, never an input the router has to be given.

Two domain classifiers, both stored as a `LinearHead` whose class values are the domain priors:
- `fit_word_prior`: multinomial naive Bayes over hashed word counts (features.py). Closed form,
  milliseconds to fit, and the better subject classifier on MMLU (about 70% of 57 subjects).
- `fit_dense_prior`: multinomial logistic regression over dense vectors (sentence embeddings).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tandem.difficulty.heads import LinearHead, percentile_table

PriorFit = Callable[[np.ndarray, list[str], np.ndarray], LinearHead]


def smoothed_domain_means(domain_index: np.ndarray, values: np.ndarray, num_domains: int,
                          smoothing: float) -> np.ndarray:
    """[num_domains] mean of `values` per domain, shrunk to the global mean by `smoothing` rows."""
    counts = np.bincount(domain_index, minlength=num_domains).astype(np.float64)
    sums = np.bincount(domain_index, weights=values, minlength=num_domains)
    overall = float(values.mean())
    return (sums + smoothing * overall) / (counts + smoothing)


def fit_word_prior(word_counts: np.ndarray, domains: list[str], values: np.ndarray,
                   smoothing: float = 20.0, alpha: float = 0.5,
                   temperature: float = 3.0) -> LinearHead:
    """Naive-Bayes domain prior over non-negative word counts [N, V]; raw score = E[prior | prompt].

    Multinomial naive Bayes is linear in the counts: log P(d | x) = x . log theta_d + log pi_d + c,
    so it is stored as a LinearHead (no standardisation) and scored by the same softmax. The
    temperature flattens its notoriously over-confident posteriors.
    """
    counts = np.asarray(word_counts, dtype=np.float64)
    if counts.ndim != 2 or np.any(counts < 0):
        raise ValueError("fit_word_prior: word_counts must be a non-negative [N, V] matrix")
    if alpha <= 0 or temperature <= 0:
        raise ValueError(f"fit_word_prior: alpha ({alpha}) and temperature ({temperature}) must be > 0")
    names, domain_index = _domain_index(domains, counts.shape[0])
    num_domains = names.size
    per_domain = np.zeros((num_domains, counts.shape[1]))
    np.add.at(per_domain, domain_index, counts)
    smoothed = per_domain + alpha
    log_theta = np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))   # [K, V]
    log_pi = np.log(np.bincount(domain_index, minlength=num_domains) / counts.shape[0])  # [K]
    priors = smoothed_domain_means(domain_index, np.asarray(values, dtype=np.float64), num_domains,
                                   smoothing)
    head = LinearHead(np.zeros(counts.shape[1]), np.ones(counts.shape[1]), log_theta / temperature,
                      log_pi / temperature, priors, np.zeros(0), np.zeros(0))
    head.calibration, head.levels = percentile_table(head.raw_scores(counts))
    return head


def fit_dense_prior(features: np.ndarray, domains: list[str], values: np.ndarray,
                    smoothing: float = 20.0, regularization: float = 1.0) -> LinearHead:
    """Logistic-regression domain prior over dense features; raw score = E[prior | prompt]."""
    names, domain_index = _domain_index(domains, np.asarray(features).shape[0])
    head = LinearHead.fit(features, domain_index, regularization)
    # The classifier's class values become the domains' priors: raw score = E[prior | prompt].
    head.class_values = smoothed_domain_means(domain_index, np.asarray(values, dtype=np.float64),
                                              names.size, smoothing)
    return head


def cross_fitted_prior(fit: PriorFit, inputs: np.ndarray, domains: list[str], values: np.ndarray,
                       num_folds: int = 5, seed: int = 0) -> np.ndarray:
    """[N] prior feature of training rows, each from a domain head that did not see that row.

    In-sample priors would be too confident (the head has seen the row and its label), and the
    final head would then lean on them more than held-out prompts deserve.
    """
    folds = np.random.default_rng(seed).permutation(len(domains)) % num_folds
    prior = np.zeros(len(domains), dtype=np.float64)
    for fold in range(num_folds):
        train, test = folds != fold, folds == fold
        head = fit(inputs[train], [d for d, t in zip(domains, train) if t], values[train])
        prior[test] = head.raw_scores(inputs[test])
    return prior


def _domain_index(domains: list[str], num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    if len(domains) != num_rows:
        raise ValueError(f"domain prior: {num_rows} rows but {len(domains)} domain labels")
    names, domain_index = np.unique(np.asarray(domains, dtype=object), return_inverse=True)
    if names.size < 2:
        raise ValueError(f"a domain prior needs at least two domains, got {names.tolist()}")
    return names, domain_index
