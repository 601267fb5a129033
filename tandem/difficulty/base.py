"""The difficulty-estimator seam: a small Protocol, a manifest on disk and a load-by-name registry.

A saved estimator is a folder with `estimator.json` (its registered name, format version and
settings) plus whatever arrays it needs. `load_estimator(dir)` reads the manifest and hands the
folder to the class registered under that name, importing its module only then, so loading the
cheap `features` estimator never imports torch.
"""

from __future__ import annotations

import importlib
import json
import pathlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from tandem.difficulty.training.data import RoutingDataset

MANIFEST = "estimator.json"
PROBE_MANIFEST = "probe.json"  # tandem.difficulty.probe's folder: loaded by the prefill worker
FORMAT_VERSION = 1

# name -> "module:Class"; the class has `load(directory)` and `fit(dataset)`.
ESTIMATORS: dict[str, str] = {
    "features": "tandem.difficulty.feature_estimator:FeatureEstimator",
    "embedding": "tandem.difficulty.embedding_estimator:EmbeddingEstimator",
}


@runtime_checkable
class DifficultyEstimator(Protocol):
    """Scores prompts by difficulty in [0, 1]; higher = harder = needs the strong model."""

    name: str

    def score(self, prompts: list[str]) -> np.ndarray:
        """[N] float64 difficulty of each prompt, in [0, 1]."""
        ...

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes the estimator to `directory` so that `load_estimator` can rebuild it."""
        ...


class TrainableEstimator(DifficultyEstimator, Protocol):
    """An estimator that learns from labelled routing data."""

    def fit(self, dataset: RoutingDataset) -> TrainableEstimator:
        """Trains on `dataset` and returns self."""
        ...


def estimator_class(name: str) -> type:
    """The class registered under `name` (imported on first use)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown difficulty estimator {name!r}; known: {sorted(ESTIMATORS)}")
    module_name, class_name = ESTIMATORS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def write_manifest(directory: str | pathlib.Path, name: str, settings: dict[str, Any]) -> pathlib.Path:
    """Creates `directory` and writes its manifest; returns the folder."""
    folder = pathlib.Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"name": name, "format_version": FORMAT_VERSION, "settings": settings}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


def read_manifest(directory: str | pathlib.Path, expected_name: str | None = None) -> dict[str, Any]:
    """Reads and checks a manifest; returns its settings (and name under '_name')."""
    path = pathlib.Path(directory) / MANIFEST
    if not path.is_file():
        if (pathlib.Path(directory) / PROBE_MANIFEST).is_file():
            raise ValueError(f"{directory} holds a hidden-state probe, which scores prefilled prompts:"
                             " give it to the prefill worker (--probe), not to the router")
        raise ValueError(f"{directory} is not a saved difficulty estimator (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise ValueError(f"{path}: expected an object with 'name' and 'settings'")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r} is not "
                         f"supported (expected {FORMAT_VERSION})")
    name = manifest.get("name")
    if expected_name is not None and name != expected_name:
        raise ValueError(f"{path} holds a {name!r} estimator, not {expected_name!r}")
    return {**manifest["settings"], "_name": name}


def load_estimator(directory: str | pathlib.Path) -> DifficultyEstimator:
    """Loads any saved estimator, dispatching on the name in its manifest."""
    name = read_manifest(directory)["_name"]
    return estimator_class(name).load(directory)


def check_prompts(prompts: list[str]) -> None:
    """Raises ValueError unless `prompts` is a list of strings."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("score() takes a list of prompt strings")
