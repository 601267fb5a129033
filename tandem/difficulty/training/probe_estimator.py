"""Training and cross-validating the hidden-state probe on labelled prompts.

`ProbeEstimator` pairs a source of final hidden states (the served model run by Tandem's engine,
or the MiniLM stand-in) with a `ProbeHead`, so that the probe trains and cross-validates through
the same `fit(dataset)` / `score(prompts)` seam as the prompt-level estimators. What it saves is
the bare `ProbeHead` folder that the prefill worker loads; the router never loads a probe,
because its hidden states only exist once the prompt has been prefilled.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from tandem.difficulty.base import check_prompts
from tandem.difficulty.heads import Target, target_labels
from tandem.difficulty.probe import ProbeHead
from tandem.difficulty.training.data import RoutingDataset
from tandem.difficulty.training.hidden_states import (CachedHiddenStates, EngineHiddenStates,
                                                      HiddenStateSource, minilm_hidden_states)

MINILM_STAND_IN = "minilm-final-token (stand-in, not the served model)"
# Inverse L2 strengths tried when none is given. A hidden state has hundreds of dimensions and a
# probe is trained on a few thousand prompts: on MMLU the best strengths were 1e-4 to 1e-3, far
# stronger than a prompt-feature head needs, and they grow with the training set.
REGULARIZATION_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
INNER_FOLDS = 3


class ProbeEstimator:
    """A linear probe on the final hidden states that `source` computes for each prompt."""

    name = "probe"

    def __init__(self, source: HiddenStateSource, source_label: str, target: Target = Target.GAIN,
                 regularization: float | None = None, prompt_format: str | None = None) -> None:
        if regularization is not None and regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {regularization}")
        self.source = source
        self.source_label = source_label
        self.prompt_format = prompt_format
        self.target = Target(target)
        self.regularization = regularization  # None: chosen by `select_regularization` in fit
        self.head: ProbeHead | None = None

    def fit(self, dataset: RoutingDataset) -> ProbeEstimator:
        """Computes the prompts' hidden states and trains the probe head on them."""
        labels = target_labels(self.target, dataset.weak_correct, dataset.strong_correct)
        states = self.source(dataset.prompts)
        regularization = self.regularization or select_regularization(
            self.source, self.source_label, self.target, dataset)
        metadata: dict[str, Any] = {"hidden_states": self.source_label, "target": self.target.value,
                                    "num_train_prompts": len(dataset),
                                    "regularization": regularization,
                                    "regularization_selected": self.regularization is None}
        if self.prompt_format is not None:
            # The prefill worker's requests must be tokenized the same way for the probe to apply.
            metadata["prompt_format"] = self.prompt_format
        self.head = ProbeHead.fit(states, labels, regularization, metadata)
        return self

    def score(self, prompts: list[str]) -> np.ndarray:
        """[N] difficulty in [0, 1] of the prompts' hidden states."""
        check_prompts(prompts)
        return self._trained_head().score_hidden(self.source(prompts))

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes the ProbeHead folder (probe.json, probe.safetensors) for the prefill worker."""
        self._trained_head().save(directory)

    def _trained_head(self) -> ProbeHead:
        if self.head is None:
            raise ValueError("the probe is not trained: call fit()")
        return self.head


def select_regularization(source: HiddenStateSource, source_label: str, target: Target,
                          dataset: RoutingDataset, seed: int = 0) -> float:
    """The grid's strength whose probe routes best (APGR) on inner folds of `dataset` alone.

    The inner folds hold out whole domains when there are enough of them, so the choice favours
    a probe that carries over to prompts unlike its training data; the outer evaluation's test
    rows are never seen.
    """
    from tandem.difficulty.training.crossval import Split, cross_validate

    split = Split.DOMAIN if len(set(dataset.domains)) >= INNER_FOLDS else Split.PROMPT

    def inner_apgr(strength: float) -> float:
        def make() -> ProbeEstimator:
            return ProbeEstimator(source, source_label, target, strength)

        return cross_validate(make, dataset, INNER_FOLDS, seed, split).pooled.apgr

    # Ties go to the weaker regularization, which fits the training data closer.
    return max(REGULARIZATION_GRID, key=lambda strength: (inner_apgr(strength), strength))


def probe_factory(model: str | pathlib.Path | None = None, device: str = "cpu",
                  prompt_format: str = "plain") -> tuple[Callable[[], ProbeEstimator], str]:
    """A maker of untrained probes sharing one hidden-state source, and that source's label.

    With `model` (a folder, a GGUF file or an alias such as `smollm2`), the states come from that
    model run by Tandem's engine (loaded once, on first use) on prompts tokenized as the router
    does in `prompt_format`, and are cached on disk; without it, from MiniLM's final-token
    states: an evaluation stand-in only.
    """
    if model is None:
        return (lambda: ProbeEstimator(minilm_hidden_states, MINILM_STAND_IN)), MINILM_STAND_IN
    from tandem.engine.gguf_import import resolve_gguf_model

    engine = EngineHiddenStates(resolve_gguf_model(model), device=device,
                                prompt_format=prompt_format)
    source = CachedHiddenStates(engine)
    label = f"engine:{engine.model_dir.resolve()}"
    return lambda: ProbeEstimator(source, label, prompt_format=prompt_format), label
