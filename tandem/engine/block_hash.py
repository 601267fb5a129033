"""Chained block hashes: the prefix cache's keys, and the router's record of who holds which prefix.

Each full block's hash is sha256 over its parent's hash and its own tokens, so a hash names the
whole prefix up to that block, and a collision (two prefixes sharing KV they do not share) would
need a sha256 collision. Python's hash() is no substitute: its int and tuple hashes collide by
construction (ints equal modulo 2**61 - 1 hash alike). Pure Python, stable across processes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

# Parent of a sequence's first block.
ROOT_HASH = b"\x00" * 32


def hash_block(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """sha256 of one full block's tokens, chained on the hash of the block before it."""
    return hashlib.sha256(parent_hash + struct.pack(f"<{len(token_ids)}q", *token_ids)).digest()


def chained_block_hashes(token_ids: Sequence[int], block_size: int) -> list[bytes]:
    """Hashes of each full block of token_ids, in order."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    hashes: list[bytes] = []
    parent = ROOT_HASH
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash_block(parent, token_ids[start : start + block_size])
        hashes.append(parent)
    return hashes
