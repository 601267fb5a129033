"""KV block bookkeeping: a pool of fixed-size blocks and the per-sequence verbs the scheduler uses.

Only block ids cross this seam; the KV itself lives in the cache tensor (kv_cache.py). Free blocks
come in two kinds: never-hashed blocks (a sorted free list, lowest ids first) and cached blocks
whose reference count fell to zero (their KV stays reusable by prefix hash until they are
evicted, least recently freed first). Allocation prefers consecutive runs of ids, because KV
transfer sends each run as one message.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass

from tandem.engine.block_hash import ROOT_HASH, hash_block
from tandem.engine.sequence import Sequence


def consecutive_runs(block_ids: list[int]) -> list[tuple[int, int]]:
    """Splits block ids into (first_id, count) runs of consecutive ids, in order."""
    runs: list[tuple[int, int]] = []
    for block_id in block_ids:
        if runs and runs[-1][0] + runs[-1][1] == block_id:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((block_id, 1))
    return runs


@dataclass(slots=True)
class Block:
    """One KV block: who uses it and, once full and computed, the hash of its contents."""

    block_id: int
    ref_count: int = 0
    block_hash: bytes | None = None
    # The block's tokens, kept to re-check a hash hit against the request's own tokens.
    token_ids: tuple[int, ...] = ()


class BlockPool:
    """Blocks with reference counts, a free list, an LRU of cached free blocks and a hash map."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.blocks = [Block(block_id) for block_id in range(num_blocks)]
        self._free_ids: list[int] = list(range(num_blocks))  # sorted; ref 0 and no hash
        self._evictable: OrderedDict[int, None] = OrderedDict()  # ref 0 with a hash; LRU first
        self._hash_to_block: dict[bytes, int] = {}
        # Canary mode (kv_canary.KVCanary): the free, never-hashed blocks hold its pattern.
        self._canary = None

    def watch_free_blocks(self, canary) -> None:
        """Canary mode: fills the free, uncached blocks with the pattern, and checks it on reuse."""
        self._canary = canary
        canary.fill(list(self._free_ids))

    def check_free_blocks(self) -> int:
        """Canary mode: checks every free, uncached block now; returns the violations (0 when off)."""
        return 0 if self._canary is None else self._canary.check(list(self._free_ids), "in a sweep")

    @property
    def num_blocks(self) -> int:
        """All blocks in the pool."""
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        """Blocks that an allocation may take (free ones plus evictable cached ones)."""
        return len(self._free_ids) + len(self._evictable)

    @property
    def num_cached_free(self) -> int:
        """Blocks nobody uses that still hold reusable prefix KV."""
        return len(self._evictable)

    def allocate(self, num_blocks: int, after: int | None = None) -> list[int]:
        """Takes blocks with one reference each: free ones first (continuing `after` if it can,
        then the lowest consecutive run, then the lowest ids), then evicts the least recently freed
        cached ones."""
        if num_blocks > self.num_free:
            raise ValueError(f"cannot allocate {num_blocks} blocks: only {self.num_free} free")
        taken = self._take_free(min(num_blocks, len(self._free_ids)), after)
        if self._canary is not None:
            self._canary.check(taken, "when they were allocated again")
        evicted = [self._evict_one() for _ in range(num_blocks - len(taken))]
        taken += sorted(evicted)
        for block_id in taken:
            self.blocks[block_id].ref_count = 1
        return taken

    def touch(self, block_ids: list[int]) -> None:
        """Adds a reference to blocks in use or cached (a prefix hit or a fork)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self._evictable[block_id]
            block.ref_count += 1

    def release(self, block_ids: list[int]) -> int:
        """Drops one reference from each block; returns how many became unused."""
        num_unused = 0
        uncached: list[int] = []
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise ValueError(f"block {block_id} released more often than it was taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                num_unused += 1
                if block.block_hash is None:
                    bisect.insort(self._free_ids, block_id)
                    uncached.append(block_id)
                else:
                    self._evictable[block_id] = None
        if self._canary is not None:
            self._canary.fill(uncached)
        return num_unused

    def lookup(self, block_hash: bytes, token_ids: tuple[int, ...]) -> int | None:
        """The cached block with this hash and exactly these tokens, or None."""
        block_id = self._hash_to_block.get(block_hash)
        if block_id is None or self.blocks[block_id].token_ids != token_ids:
            return None
        return block_id

    def register(self, block_id: int, block_hash: bytes, token_ids: tuple[int, ...]) -> None:
        """Makes a full, computed block findable by its hash (the first block with a hash wins)."""
        block = self.blocks[block_id]
        if block.block_hash is not None or block_hash in self._hash_to_block:
            return
        block.block_hash = block_hash
        block.token_ids = token_ids
        self._hash_to_block[block_hash] = block_id

    def ref_count(self, block_id: int) -> int:
        """Current references to a block."""
        return self.blocks[block_id].ref_count

    def _take_free(self, num_blocks: int, after: int | None) -> list[int]:
        free = self._free_ids
        taken: list[int] = []
        if after is not None:
            start = bisect.bisect_left(free, after + 1)
            end = start
            while end < len(free) and end - start < num_blocks and free[end] == after + 1 + end - start:
                end += 1
            taken = free[start:end]
            del free[start:end]
        remaining = num_blocks - len(taken)
        if remaining > 0:
            start = _first_run(free, remaining)
            taken += free[start : start + remaining]
            del free[start : start + remaining]
        return taken

    def _evict_one(self) -> int:
        block_id, _ = self._evictable.popitem(last=False)
        block = self.blocks[block_id]
        del self._hash_to_block[block.block_hash]
        block.block_hash = None
        block.token_ids = ()
        return block_id


def _first_run(sorted_ids: list[int], length: int) -> int:
    # Index of the first run of `length` consecutive ids; 0 (the lowest ids) when there is none.
    for i in range(len(sorted_ids) - length + 1):
        if sorted_ids[i + length - 1] - sorted_ids[i] == length - 1:
            return i
    return 0


class KVCacheManager:
    """The scheduler's verbs over a BlockPool: prefix lookup, slot allocation, COW forks, free."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.pool = BlockPool(num_blocks)
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        # (source, destination) block copies that must run before the next forward step.
        self.pending_copies: list[tuple[int, int]] = []

    def num_blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold num_tokens tokens."""
        return -(-num_tokens // self.block_size)

    def get_computed_blocks(self, seq: Sequence) -> tuple[list[int], int]:
        """Leading blocks of seq's tokens found in the prefix cache, and the tokens they hold.

        At least one token is always left to compute: its logits give the next token.
        """
        if not self.enable_prefix_caching:
            return [], 0
        hits: list[int] = []
        for index in range((seq.num_tokens - 1) // self.block_size):
            block_id = self.pool.lookup(self._block_hash(seq, index), self._block_tokens(seq, index))
            if block_id is None:
                break
            hits.append(block_id)
        return hits, len(hits) * self.block_size

    def allocate_slots(self, seq: Sequence, num_new_tokens: int,
                       computed_blocks: list[int] | None = None) -> list[int] | None:
        """Adopts prefix-hit blocks (a sequence without blocks only) and makes room for the next
        num_new_tokens tokens; returns the newly allocated ids, or None (and changes nothing) when
        the pool is short, so that the caller can preempt and retry."""
        computed_blocks = computed_blocks or []
        if computed_blocks and seq.block_ids:
            raise ValueError(f"{seq.request_id}: prefix blocks can only be adopted by a new sequence")
        num_computed = seq.num_computed_tokens + len(computed_blocks) * self.block_size
        num_required = self.num_blocks_for(num_computed + num_new_tokens)
        num_new_blocks = max(0, num_required - len(seq.block_ids) - len(computed_blocks))
        needs_copy = num_new_tokens > 0 and self._is_last_block_shared(seq)
        num_revived = sum(1 for b in computed_blocks if self.pool.ref_count(b) == 0)
        if num_new_blocks + needs_copy > self.pool.num_free - num_revived:
            return None
        if computed_blocks:
            self.pool.touch(computed_blocks)
            seq.block_ids.extend(computed_blocks)
            seq.num_cached_blocks = len(computed_blocks)
            seq.num_computed_tokens = num_computed
        new_block_ids: list[int] = []
        if needs_copy:
            new_block_ids += self._copy_last_block(seq)
        if num_new_blocks:
            after = seq.block_ids[-1] if seq.block_ids else None
            allocated = self.pool.allocate(num_new_blocks, after)
            seq.block_ids.extend(allocated)
            new_block_ids += allocated
        return new_block_ids

    def cache_blocks(self, seq: Sequence) -> None:
        """Registers seq's full, computed blocks for prefix reuse."""
        if not self.enable_prefix_caching:
            return
        num_full = min(seq.num_computed_tokens // self.block_size, len(seq.block_ids))
        for index in range(seq.num_cached_blocks, num_full):
            block_hash = self._block_hash(seq, index)
            self.pool.register(seq.block_ids[index], block_hash, self._block_tokens(seq, index))
        seq.num_cached_blocks = max(seq.num_cached_blocks, num_full)

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Lets child share all of parent's blocks; a shared partial block is copied on first write."""
        child.block_ids = list(parent.block_ids)
        self.pool.touch(child.block_ids)

    def free(self, seq: Sequence) -> int:
        """Drops seq's blocks (tail first, so that tail blocks are evicted first); returns how many
        blocks became unused. The sequence keeps its tokens but no longer any computed KV."""
        num_unused = self.pool.release(list(reversed(seq.block_ids)))
        seq.block_ids = []
        seq.num_cached_blocks = 0
        seq.num_computed_tokens = 0
        return num_unused

    def take_pending_copies(self) -> list[tuple[int, int]]:
        """Returns and clears the block copies scheduled since the last call."""
        copies, self.pending_copies = self.pending_copies, []
        return copies

    def _is_last_block_shared(self, seq: Sequence) -> bool:
        # The next token lands in the last block only when that block is partly filled.
        if not seq.block_ids or seq.num_computed_tokens % self.block_size == 0:
            return False
        last_index = seq.num_computed_tokens // self.block_size
        return last_index < len(seq.block_ids) and self.pool.ref_count(seq.block_ids[last_index]) > 1

    def _copy_last_block(self, seq: Sequence) -> list[int]:
        last_index = seq.num_computed_tokens // self.block_size
        source = seq.block_ids[last_index]
        after = seq.block_ids[last_index - 1] if last_index > 0 else None
        (copy,) = self.pool.allocate(1, after)
        self.pool.release([source])
        seq.block_ids[last_index] = copy
        self.pending_copies.append((source, copy))
        return [copy]

    def _block_tokens(self, seq: Sequence, index: int) -> tuple[int, ...]:
        return tuple(seq.token_ids[index * self.block_size : (index + 1) * self.block_size])

    def _block_hash(self, seq: Sequence, index: int) -> bytes:
        hashes = seq.block_hashes
        while len(hashes) <= index:
            parent = hashes[-1] if hashes else ROOT_HASH
            hashes.append(hash_block(parent, self._block_tokens(seq, len(hashes))))
        return hashes[index]
