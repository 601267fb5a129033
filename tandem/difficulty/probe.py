"""The difficulty probe: a linear head on the prompt's final hidden state (the DiffAdapt idea).

The prefill worker already computes the hidden state of the last prompt token (the input of the
LM head, after the final norm) to produce the first token, so a probe costs one dot product per
request. It loads with plain json + safetensors + numpy; nothing here imports torch.

    probe = ProbeHead.load(directory)
    difficulty = float(probe.score_hidden(h[None])[0])   # h: [hidden_size], numpy or torch

Training: `ProbeHead.fit(hidden_states [N, H], labels [N])`, labels being the classes of a
`Target` (see heads.py; default `gain`: strong minus weak correctness in {-1, 0, 1}; booleans are
read as "the weak model fails"). The score is the percentile among the training prompts, on the
same scale as the router's prompt-level estimators, so the two can be blended.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from tandem.difficulty.heads import LinearHead, load_arrays, save_arrays

MANIFEST = "probe.json"
ARRAYS_FILE = "probe.safetensors"
FORMAT_VERSION = 1
HIDDEN_STATE_KIND = "final_norm_output_last_prompt_token"


class ProbeHead:
    """Linear difficulty probe over [hidden_size] hidden-state vectors."""

    def __init__(self, head: LinearHead, metadata: dict[str, Any] | None = None) -> None:
        self.head = head
        self.hidden_size = int(head.mean.shape[0])
        self.metadata = dict(metadata or {})

    @classmethod
    def fit(cls, hidden_states: np.ndarray, labels: np.ndarray, regularization: float = 0.05,
            metadata: dict[str, Any] | None = None) -> ProbeHead:
        """Trains the probe; `metadata` (model name, target, ...) is saved with it."""
        states = _as_states(hidden_states)
        labels = np.asarray(labels)
        if labels.dtype == np.bool_:
            labels = labels.astype(np.int64)
        return cls(LinearHead.fit(states, labels, regularization), metadata)

    def score_hidden(self, hidden_states: Any) -> np.ndarray:
        """[N] difficulty in [0, 1] of [N, H] (or one [H]) hidden states."""
        states = _as_states(hidden_states)
        if states.shape[1] != self.hidden_size:
            raise ValueError(f"probe expects hidden states of size {self.hidden_size}, "
                             f"got {states.shape[1]}")
        return self.head.scores(states)

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes probe.json and probe.safetensors into `directory`."""
        folder = pathlib.Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format_version": FORMAT_VERSION, "hidden_size": self.hidden_size,
                    "hidden_state": HIDDEN_STATE_KIND, "metadata": self.metadata}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        save_arrays(folder / ARRAYS_FILE, self.head.arrays("probe."))

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> ProbeHead:
        """Reads a probe written by `save`."""
        folder = pathlib.Path(directory)
        path = folder / MANIFEST
        if not path.is_file():
            raise ValueError(f"{folder} is not a saved difficulty probe (no {MANIFEST})")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format_version {manifest.get('format_version')!r}")
        probe = cls(LinearHead.from_arrays(load_arrays(folder / ARRAYS_FILE), "probe."),
                    manifest.get("metadata"))
        if probe.hidden_size != manifest.get("hidden_size"):
            raise ValueError(f"{path}: hidden_size {manifest.get('hidden_size')} does not match "
                             f"the saved weights ({probe.hidden_size})")
        return probe


def _as_states(hidden_states: Any) -> np.ndarray:
    # Accept torch tensors (any dtype/device) without importing torch here.
    if hasattr(hidden_states, "detach"):
        hidden_states = hidden_states.detach().float().cpu().numpy()
    states = np.asarray(hidden_states, dtype=np.float64)
    if states.ndim == 1:
        states = states[None, :]
    if states.ndim != 2 or states.shape[0] == 0:
        raise ValueError(f"hidden states must be [N, H] or [H], got shape {states.shape}")
    if not np.all(np.isfinite(states)):
        raise ValueError("hidden states contain NaN or infinity")
    return states
