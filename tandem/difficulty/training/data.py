"""Labelled routing data in RouteLLM's CSV format: a prompt column and per-model correctness.

A RouteLLM response file (e.g. `routellm/evals/mmlu/responses/mmlu_<subject>.csv`) has one row
per question: the prompt text and one boolean column per model saying whether that model
answered correctly. Each file is also a *domain* (the MMLU subject); the domain is only a
training-time label: at serving time estimators see nothing but the prompt text.
"""

from __future__ import annotations

import csv
import glob
import os
import pathlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TRUE = frozenset({"true", "1", "yes", "t", "y", "1.0"})
_FALSE = frozenset({"false", "0", "no", "f", "n", "0.0"})


def shared_data_dir() -> pathlib.Path:
    """The project's reference data folder: $TANDEM_SHARED_DATA or ../shared/data beside the repo."""
    env = os.environ.get("TANDEM_SHARED_DATA")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


@dataclass(slots=True)
class RoutingDataset:
    """Prompts with the weak and the strong model's correctness, and each row's domain."""

    prompts: list[str]
    weak_correct: np.ndarray    # [N] bool
    strong_correct: np.ndarray  # [N] bool
    domains: list[str]          # [N] source file stem, e.g. "mmlu_anatomy"

    def __post_init__(self) -> None:
        num_rows = len(self.prompts)
        if num_rows == 0:
            raise ValueError("RoutingDataset: no rows")
        for name in ("weak_correct", "strong_correct"):
            column = getattr(self, name)
            if column.shape != (num_rows,) or column.dtype != np.bool_:
                raise ValueError(f"RoutingDataset: {name} must be a bool array of shape ({num_rows},)")
        if len(self.domains) != num_rows:
            raise ValueError("RoutingDataset: domains must have one entry per prompt")

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def gain(self) -> np.ndarray:
        """[N] int8: +1 where only the strong model is right, -1 where only the weak one is."""
        return self.strong_correct.astype(np.int8) - self.weak_correct.astype(np.int8)

    def subset(self, indices: np.ndarray) -> RoutingDataset:
        """The rows at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return RoutingDataset(
            prompts=[self.prompts[i] for i in indices],
            weak_correct=self.weak_correct[indices],
            strong_correct=self.strong_correct[indices],
            domains=[self.domains[i] for i in indices],
        )


def expand_paths(patterns: Sequence[str]) -> list[pathlib.Path]:
    """Expands glob patterns (sorted, de-duplicated); a pattern matching nothing is an error."""
    paths: list[pathlib.Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise ValueError(f"no CSV file matches {pattern!r}")
        paths.extend(pathlib.Path(m) for m in matches)
    return list(dict.fromkeys(paths))


def parse_bool(value: str, where: str) -> bool:
    """Parses a correctness cell ('True'/'False', '1'/'0', ...); anything else is an error."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{where}: expected a boolean, got {value!r}")


def load_routing_csvs(
    patterns: Sequence[str], prompt_col: str, weak_col: str, strong_col: str,
    limit: int | None = None,
) -> RoutingDataset:
    """Reads RouteLLM-format CSVs (paths or globs) into one dataset, files in sorted order.

    `limit` keeps an evenly spaced subset of at most that many rows (every file represented).
    """
    csv.field_size_limit(sys.maxsize)
    prompts: list[str] = []
    weak: list[bool] = []
    strong: list[bool] = []
    domains: list[str] = []
    for path in expand_paths(patterns):
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            for column in (prompt_col, weak_col, strong_col):
                if column not in header:
                    raise ValueError(f"{path}: no column {column!r}; columns are {header}")
            for line_no, row in enumerate(reader, start=2):
                where = f"{path}:{line_no}"
                prompts.append(row[prompt_col])
                weak.append(parse_bool(row[weak_col] or "", f"{where} {weak_col}"))
                strong.append(parse_bool(row[strong_col] or "", f"{where} {strong_col}"))
                domains.append(path.stem)
    dataset = RoutingDataset(prompts, np.array(weak, dtype=bool), np.array(strong, dtype=bool),
                             domains)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be > 0, got {limit}")
        if limit < len(dataset):
            dataset = dataset.subset(np.linspace(0, len(dataset) - 1, limit).round().astype(np.int64))
    return dataset
