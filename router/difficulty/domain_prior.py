"""A learned per-domain prior: which domain a prompt reads like, times how hard that domain is.

Training rows carry a domain label (for RouteLLM's MMLU files, the subject: the file a row came
from). A multinomial head learns to recognise the domain from the prompt's features; each
domain's prior is its smoothed mean training target. At serving time only the prompt is needed:
the prior feature is sum_d P(domain d | prompt) * prior_d. The domain is thus in-distribution
information read off the prompt text, never an input the router has to be given.
"""

from __future__ import annotations

import numpy as np

from router.difficulty.heads import LinearHead


def smoothed_domain_means(domain_index: np.ndarray, values: np.ndarray, num_domains: int,
                          smoothing: float) -> np.ndarray:
    """[num_domains] mean of `values` per domain, shrunk to the global mean by `smoothing` rows."""
    counts = np.bincount(domain_index, minlength=num_domains).astype(np.float64)
    sums = np.bincount(domain_index, weights=values, minlength=num_domains)
    overall = float(values.mean())
    return (sums + smoothing * overall) / (counts + smoothing)


def fit_domain_prior(features: np.ndarray, domains: list[str], values: np.ndarray,
                     smoothing: float = 20.0, regularization: float = 1.0) -> LinearHead:
    """A head whose raw score is the expected domain prior of a prompt."""
    names, domain_index = np.unique(np.asarray(domains, dtype=object), return_inverse=True)
    if names.size < 2:
        raise ValueError(f"a domain prior needs at least two domains, got {names.tolist()}")
    head = LinearHead.fit(features, domain_index, regularization)
    # The classifier's class values become the domains' priors: raw score = E[prior | prompt].
    head.class_values = smoothed_domain_means(domain_index, np.asarray(values, dtype=np.float64),
                                              names.size, smoothing)
    return head


def cross_fitted_prior(features: np.ndarray, domains: list[str], values: np.ndarray,
                       num_folds: int = 5, seed: int = 0, **kwargs: float) -> np.ndarray:
    """[N] prior feature of training rows, each from a domain head that did not see that row.

    In-sample priors would be too confident (the head has seen the row and its label), and the
    final head would then lean on them more than held-out prompts deserve.
    """
    rng = np.random.default_rng(seed)
    folds = rng.permutation(len(domains)) % num_folds
    prior = np.zeros(len(domains), dtype=np.float64)
    for fold in range(num_folds):
        train, test = folds != fold, folds == fold
        head = fit_domain_prior(features[train], [d for d, t in zip(domains, train) if t],
                                values[train], **kwargs)
        prior[test] = head.raw_scores(features[test])
    return prior
