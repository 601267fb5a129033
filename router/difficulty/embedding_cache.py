"""An on-disk cache of MiniLM outputs per prompt, keyed by content hash, for training and eval.

Layout: `<root>/<weights fingerprint>/<shard>.npz`, each shard holding `keys` ([M, 16] uint8
blake2b digests of prompt texts) and `pooled` / `final` ([M, 384] float32, see
`MiniLMEncoder.hidden_states`). All shards of the current weights are read into memory on first
use; prompts not found are encoded and written as one new shard. The default root is
$TANDEM_CACHE_DIR or ~/.cache/tandem/embeddings. The serving path never uses the cache.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import uuid
from collections.abc import Callable, Sequence

import numpy as np

from router.difficulty.minilm import (EMBEDDING_DIM, MiniLMEncoder, minilm_model_dir,
                                      weights_fingerprint)


def default_cache_root() -> pathlib.Path:
    """$TANDEM_CACHE_DIR/embeddings, or ~/.cache/tandem/embeddings."""
    base = os.environ.get("TANDEM_CACHE_DIR")
    root = pathlib.Path(base) if base else pathlib.Path.home() / ".cache" / "tandem"
    return root / "embeddings"


def prompt_key(prompt: str) -> bytes:
    """16-byte content hash of a prompt."""
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()


class EmbeddingCache:
    """Returns cached (pooled, final) MiniLM vectors of prompts, encoding only unseen ones."""

    def __init__(self, root: pathlib.Path | None = None,
                 encoder_factory: Callable[[], MiniLMEncoder] = MiniLMEncoder) -> None:
        self.root = root or default_cache_root()
        self._encoder_factory = encoder_factory
        self._encoder: MiniLMEncoder | None = None
        self._rows: dict[bytes, tuple[np.ndarray, np.ndarray]] | None = None
        self._folder: pathlib.Path | None = None

    def pooled(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, 384] normalised mean-pooled embeddings."""
        return self.vectors(prompts)[0]

    def final(self, prompts: Sequence[str]) -> np.ndarray:
        """[N, 384] last-layer state of each prompt's final token."""
        return self.vectors(prompts)[1]

    def vectors(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Pooled and final-token vectors, [N, 384] each."""
        rows = self._load()
        keys = [prompt_key(p) for p in prompts]
        missing = {key: prompt for key, prompt in zip(keys, prompts) if key not in rows}
        if missing:
            self._add(list(missing.keys()), list(missing.values()))
        pooled = np.zeros((len(prompts), EMBEDDING_DIM), dtype=np.float32)
        final = np.zeros((len(prompts), EMBEDDING_DIM), dtype=np.float32)
        for index, key in enumerate(keys):
            pooled[index], final[index] = rows[key]
        return pooled, final

    def _encoder_instance(self) -> MiniLMEncoder:
        if self._encoder is None:
            self._encoder = self._encoder_factory()
        return self._encoder

    def _folder_path(self) -> pathlib.Path:
        if self._folder is None:
            self._folder = self.root / weights_fingerprint(minilm_model_dir())
        return self._folder

    def _load(self) -> dict[bytes, tuple[np.ndarray, np.ndarray]]:
        if self._rows is not None:
            return self._rows
        folder = self._folder_path()
        self._rows = {}
        for shard in sorted(folder.glob("*.npz")) if folder.is_dir() else []:
            with np.load(shard) as data:
                for key, pooled, final in zip(data["keys"], data["pooled"], data["final"]):
                    self._rows[key.tobytes()] = (pooled, final)
        return self._rows

    def _add(self, keys: list[bytes], prompts: list[str]) -> None:
        rows, folder = self._load(), self._folder_path()
        pooled, final = self._encoder_instance().hidden_states(prompts)
        for key, p, f in zip(keys, pooled, final):
            rows[key] = (p, f)
        folder.mkdir(parents=True, exist_ok=True)
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        # Write under a temporary name and rename, so a reader never sees half a shard.
        shard = folder / f"{uuid.uuid4().hex}.npz"
        partial = folder / f"{shard.stem}.partial"
        with open(partial, "wb") as handle:
            np.savez(handle, keys=key_array, pooled=pooled, final=final)
        partial.rename(shard)
