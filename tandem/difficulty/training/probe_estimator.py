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


class ProbeEstimator:
    """A linear probe on the final hidden states that `source` computes for each prompt."""

    name = "probe"

    def __init__(self, source: HiddenStateSource, source_label: str, target: Target = Target.GAIN,
                 regularization: float = 0.05, prompt_format: str | None = None) -> None:
        if regularization <= 0:
            raise ValueError(f"regularization must be > 0, got {regularization}")
        self.source = source
        self.source_label = source_label
        self.prompt_format = prompt_format
        self.target = Target(target)
        self.regularization = regularization
        self.head: ProbeHead | None = None

    def fit(self, dataset: RoutingDataset) -> ProbeEstimator:
        """Computes the prompts' hidden states and trains the probe head on them."""
        labels = target_labels(self.target, dataset.weak_correct, dataset.strong_correct)
        states = self.source(dataset.prompts)
        metadata: dict[str, Any] = {"hidden_states": self.source_label, "target": self.target.value,
                                    "num_train_prompts": len(dataset)}
        if self.prompt_format is not None:
            # The prefill worker's requests must be tokenized the same way for the probe to apply.
            metadata["prompt_format"] = self.prompt_format
        self.head = ProbeHead.fit(states, labels, self.regularization, metadata)
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
