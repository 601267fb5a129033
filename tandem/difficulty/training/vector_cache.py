"""An on-disk cache of per-prompt vectors (embeddings, hidden states), keyed by the prompt's text.

Layout: `<folder>/<shard>.npz`, each shard holding `keys` ([M, 16] uint8 blake2b digests of the
prompt texts) and one float32 [M, D] array per name. The caller picks the folder so that it
names everything the vectors depend on (the model's weights, the prompt format); the keys name
the data. Shards are written whole under a temporary name and renamed, so a reader never sees
half a shard and an interrupted fill keeps every shard it finished. Training and evaluation only:
the serving path never reads a cache.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import uuid
from collections.abc import Callable, Sequence

import numpy as np

Compute = Callable[[list[str]], tuple[np.ndarray, ...]]


def cache_root() -> pathlib.Path:
    """$TANDEM_CACHE (the folder converted models live in too), else ~/.cache/tandem."""
    return pathlib.Path(os.environ.get("TANDEM_CACHE", pathlib.Path.home() / ".cache" / "tandem"))


def prompt_key(prompt: str) -> bytes:
    """16-byte content hash of a prompt."""
    return hashlib.blake2b(prompt.encode("utf-8"), digest_size=16).digest()


class VectorCache:
    """Returns cached vectors of prompts, computing (and storing) only the unseen ones."""

    def __init__(self, folder: pathlib.Path, names: tuple[str, ...], shard_rows: int = 256) -> None:
        if not names or "keys" in names or shard_rows <= 0:
            raise ValueError(f"VectorCache: bad names {names} or shard_rows {shard_rows}")
        self.folder = pathlib.Path(folder)
        self.names = names
        self.shard_rows = shard_rows
        self._rows: dict[bytes, tuple[np.ndarray, ...]] | None = None

    def get(self, prompts: Sequence[str], compute: Compute) -> tuple[np.ndarray, ...]:
        """One [N, D] float32 array per name; `compute(prompts)` fills the missing rows."""
        rows = self._load()
        keys = [prompt_key(p) for p in prompts]
        missing = list({key: p for key, p in zip(keys, prompts) if key not in rows}.items())
        for start in range(0, len(missing), self.shard_rows):
            chunk = missing[start:start + self.shard_rows]
            self._store([key for key, _ in chunk], compute([p for _, p in chunk]))
        if not keys:
            return tuple(np.zeros((0, 0), dtype=np.float32) for _ in self.names)
        return tuple(np.stack([rows[key][i] for key in keys]).astype(np.float32, copy=False)
                     for i in range(len(self.names)))

    def __len__(self) -> int:
        return len(self._load())

    def _load(self) -> dict[bytes, tuple[np.ndarray, ...]]:
        if self._rows is None:
            self._rows = {}
            for shard in sorted(self.folder.glob("*.npz")) if self.folder.is_dir() else []:
                with np.load(shard) as data:
                    columns = [data[name] for name in self.names]
                    for index, key in enumerate(data["keys"]):
                        self._rows[key.tobytes()] = tuple(column[index] for column in columns)
        return self._rows

    def _store(self, keys: list[bytes], arrays: tuple[np.ndarray, ...]) -> None:
        if len(arrays) != len(self.names) or any(a.shape[0] != len(keys) for a in arrays):
            raise ValueError(f"VectorCache: expected {len(self.names)} arrays of {len(keys)} rows")
        rows = self._load()
        for index, key in enumerate(keys):
            rows[key] = tuple(np.asarray(a[index], dtype=np.float32) for a in arrays)
        self.folder.mkdir(parents=True, exist_ok=True)
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 16)
        shard = self.folder / f"{uuid.uuid4().hex}.npz"
        partial = self.folder / f"{shard.stem}.partial"
        with open(partial, "wb") as handle:
            np.savez(handle, keys=key_array,
                     **{name: np.asarray(a, dtype=np.float32) for name, a in zip(self.names, arrays)})
        partial.rename(shard)
