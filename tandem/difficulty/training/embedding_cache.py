"""MiniLM vectors of prompts for training and evaluation, cached on disk per weights fingerprint.

Layout: `$TANDEM_CACHE/embeddings/<weights fingerprint>/<shard>.npz` (see vector_cache.py), each
row holding `pooled` and `final` ([384] float32 each, see `MiniLMEncoder.hidden_states`). The
encoder is built only when a prompt is missing. The serving path never uses the cache.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

import numpy as np

from tandem.difficulty.minilm import MiniLMEncoder, minilm_model_dir, weights_fingerprint
from tandem.difficulty.training.vector_cache import VectorCache, cache_root


class EmbeddingCache:
    """Returns cached (pooled, final) MiniLM vectors of prompts, encoding only unseen ones."""

    def __init__(self, root: pathlib.Path | None = None,
                 encoder_factory: Callable[[], MiniLMEncoder] = MiniLMEncoder) -> None:
        self.root = root or cache_root() / "embeddings"
        self._encoder_factory = encoder_factory
        self._encoder: MiniLMEncoder | None = None
        self._cache: VectorCache | None = None

    def pooled(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, 384] normalised mean-pooled embeddings."""
        return self.vectors(prompts)[0]

    def final(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, 384] last-layer state of each prompt's final token."""
        return self.vectors(prompts)[1]

    def vectors(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled and final-token vectors, [N, 384] each."""
        if self._cache is None:
            folder = self.root / weights_fingerprint(minilm_model_dir())
            self._cache = VectorCache(folder, ("pooled", "final"))
        pooled, final = self._cache.get(list(prompts), self._encode)
        return pooled, final

    def _encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._encoder is None:
            self._encoder = self._encoder_factory()
        return self._encoder.hidden_states(prompts)
