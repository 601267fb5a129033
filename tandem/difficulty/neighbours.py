"""Similarity-weighted neighbours: how the training prompts most like this one went.

For each prompt, the `num_neighbours` training prompts with the highest cosine similarity of their
sentence embeddings give two features: their mean gain (strong minus weak correctness) and the
mean prior of their domains. This is the idea of RouteLLM's similarity-weighted ranking router,
reduced to a lookup over the training set: the embeddings of the training prompts are kept
([M, 384] float32, about 1.5 kB a prompt), and one query costs one [M, 384] matrix-vector product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK_ROWS = 1024  # queries per similarity block: bounds memory to CHUNK_ROWS x M floats
DUPLICATE_SIMILARITY = 1.0 - 1e-6


@dataclass(slots=True)
class NeighbourTable:
    """Unit-norm embeddings of the training prompts with their gain and domain prior."""

    embeddings: np.ndarray    # [M, D] float32, L2-normalised
    gain: np.ndarray          # [M] float64 strong minus weak correctness
    domain_prior: np.ndarray  # [M] float64 prior of each training prompt's domain
    num_neighbours: int

    def __post_init__(self) -> None:
        num_rows = self.embeddings.shape[0]
        if self.embeddings.ndim != 2 or self.gain.shape != (num_rows,) \
                or self.domain_prior.shape != (num_rows,):
            raise ValueError("NeighbourTable: embeddings [M, D], gain [M] and domain_prior [M] "
                             "must agree")
        if not 1 <= self.num_neighbours < num_rows:
            raise ValueError(f"NeighbourTable: num_neighbours must be in [1, {num_rows - 1}], "
                             f"got {self.num_neighbours}")

    def features(self, queries: np.ndarray, exclude_duplicates: bool = False) -> np.ndarray:
        """[N, 2] mean gain and mean domain prior of each query's nearest training prompts.

        With `exclude_duplicates`, a query never counts a training prompt identical to itself
        (similarity 1): training rows then see their neighbours as a held-out prompt would.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"neighbour queries must be [N, {self.embeddings.shape[1]}], "
                             f"got {queries.shape}")
        result = np.zeros((queries.shape[0], 2), dtype=np.float64)
        for start in range(0, queries.shape[0], CHUNK_ROWS):
            similarity = queries[start:start + CHUNK_ROWS] @ self.embeddings.T  # [n, M]
            if exclude_duplicates:
                similarity[similarity >= DUPLICATE_SIMILARITY] = -np.inf
            nearest = np.argpartition(-similarity, self.num_neighbours - 1, axis=1)
            nearest = nearest[:, :self.num_neighbours]                          # [n, k]
            result[start:start + CHUNK_ROWS, 0] = self.gain[nearest].mean(axis=1)
            result[start:start + CHUNK_ROWS, 1] = self.domain_prior[nearest].mean(axis=1)
        return result

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The table's arrays under `prefix`, for safetensors."""
        return {f"{prefix}embeddings": np.ascontiguousarray(self.embeddings, dtype=np.float32),
                f"{prefix}gain": np.ascontiguousarray(self.gain, dtype=np.float64),
                f"{prefix}domain_prior": np.ascontiguousarray(self.domain_prior, dtype=np.float64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str,
                    num_neighbours: int) -> NeighbourTable:
        """Rebuilds a table saved by `arrays`."""
        names = ("embeddings", "gain", "domain_prior")
        missing = [name for name in names if f"{prefix}{name}" not in arrays]
        if missing:
            raise ValueError(f"saved neighbour table lacks arrays {missing}")
        return cls(*(arrays[f"{prefix}{name}"] for name in names), num_neighbours=num_neighbours)
