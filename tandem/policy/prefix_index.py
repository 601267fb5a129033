"""An approximate record of which prompt blocks each worker probably holds in its KV cache.

The router cannot see inside workers' caches; it remembers the block hashes it routed to each
worker, least recently used first out, bounded per worker. Block hashes are chained (each covers
its whole prefix), so a worker's hit count is its run of leading blocks that are all recorded.
"""

from __future__ import annotations

import collections


class PrefixIndex:
    """Per-worker LRU sets of block hashes, with a reverse map for matching in O(prompt blocks)."""

    def __init__(self, max_blocks_per_worker: int = 100_000) -> None:
        if max_blocks_per_worker < 1:
            raise ValueError(f"max_blocks_per_worker must be >= 1, got {max_blocks_per_worker}")
        self.max_blocks_per_worker = max_blocks_per_worker
        self._lru: dict[str, collections.OrderedDict[int, None]] = {}
        self._owners: dict[int, set[str]] = {}

    def match(self, block_hashes: list[int]) -> dict[str, int]:
        """{worker_id: number of leading blocks of `block_hashes` recorded for it}, hits only."""
        hits: dict[str, int] = {}
        if not block_hashes:
            return hits
        alive = set(self._owners.get(block_hashes[0], ()))
        for depth, block_hash in enumerate(block_hashes[1:], start=1):
            if not alive:
                break
            owners = self._owners.get(block_hash, ())
            for worker_id in alive.difference(owners):
                hits[worker_id] = depth
            alive.intersection_update(owners)
        for worker_id in alive:
            hits[worker_id] = len(block_hashes)
        return hits

    def record(self, worker_id: str, block_hashes: list[int]) -> None:
        """Notes that `worker_id` now holds `block_hashes`, evicting its least recently used."""
        lru = self._lru.setdefault(worker_id, collections.OrderedDict())
        for block_hash in block_hashes:
            if block_hash in lru:
                lru.move_to_end(block_hash)
                continue
            lru[block_hash] = None
            self._owners.setdefault(block_hash, set()).add(worker_id)
        while len(lru) > self.max_blocks_per_worker:
            evicted, _ = lru.popitem(last=False)
            self._drop_owner(evicted, worker_id)

    def forget(self, worker_id: str) -> None:
        """Drops everything recorded for a worker (it left, or its cache was cleared)."""
        for block_hash in self._lru.pop(worker_id, {}):
            self._drop_owner(block_hash, worker_id)

    def num_blocks(self, worker_id: str) -> int:
        """How many block hashes are recorded for a worker."""
        return len(self._lru.get(worker_id, ()))

    def _drop_owner(self, block_hash: int, worker_id: str) -> None:
        owners = self._owners[block_hash]
        owners.discard(worker_id)
        if not owners:
            del self._owners[block_hash]
