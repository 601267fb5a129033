"""Debug canary mode: free KV blocks hold a byte pattern that is checked when they are taken again.

A block that nobody holds and that is not kept as a cached prefix is filled, in every layer, with
CANARY_BYTE. Taking it again, or a sweep over every free block, checks the pattern: a changed byte
means something wrote into the block after it was released (a KV transfer that outlived its
reservation, a step writing through a stale block table). Each violated block is logged at ERROR,
counted in tandem_kv_canary_violations_total and filled again, so that it is reported once.
"""

from __future__ import annotations

import logging

import torch

from tandem.telemetry.metrics import default_metrics

logger = logging.getLogger(__name__)

# 0xA5 in every byte: a finite value in float32, bfloat16 and float16, unlike anything a model writes.
CANARY_BYTE = 0xA5
# Blocks checked per comparison: bounds the temporary copy a sweep of a large cache makes.
_CHECK_CHUNK_BLOCKS = 64


class KVCanary:
    """Fills and checks the canary pattern in blocks of one paged KV cache."""

    def __init__(self, kv_cache: torch.Tensor) -> None:
        # [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim * element_size] bytes
        self._bytes = kv_cache.view(torch.uint8)

    def fill(self, block_ids: list[int]) -> None:
        """Writes the pattern into every layer of these blocks."""
        if block_ids:
            self._bytes[:, self._index(block_ids)] = CANARY_BYTE

    def check(self, block_ids: list[int], when: str) -> int:
        """Checks the pattern in these blocks; reports and re-fills each violated one; returns how many."""
        violated: list[int] = []
        for start in range(0, len(block_ids), _CHECK_CHUNK_BLOCKS):
            chunk = block_ids[start : start + _CHECK_CHUNK_BLOCKS]
            region = self._bytes.index_select(1, self._index(chunk)).transpose(0, 1)  # [n, layers, ...]
            intact = (region == CANARY_BYTE).flatten(1).all(dim=1).tolist()
            violated += [block_id for block_id, ok in zip(chunk, intact) if not ok]
        if violated:
            logger.error("KV canary: %d free block(s) %s were written after their release (found %s)",
                         len(violated), violated, when)
            default_metrics().kv_canary_violations.inc(len(violated))
            self.fill(violated)
        return len(violated)

    def _index(self, block_ids: list[int]) -> torch.Tensor:
        return torch.tensor(block_ids, dtype=torch.int64, device=self._bytes.device)
