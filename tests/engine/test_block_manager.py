"""Block pool and KV manager: exact block ids for allocation, reuse, eviction and copy-on-write."""

from __future__ import annotations

import pytest

from tandem.engine.block_hash import ROOT_HASH, hash_block
from tandem.engine.block_manager import BlockPool, KVCacheManager, consecutive_runs
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import Sequence

BLOCK_SIZE = 4


def make_seq(request_id: str, token_ids: list[int]) -> Sequence:
    return Sequence(request_id, token_ids, SamplingParams(temperature=0.0))


def compute(manager: KVCacheManager, seq: Sequence, num_tokens: int | None = None) -> list[int]:
    """Allocates and marks computed the next num_tokens tokens (all uncomputed ones by default)."""
    num_tokens = seq.num_uncomputed_tokens if num_tokens is None else num_tokens
    new_ids = manager.allocate_slots(seq, num_tokens)
    assert new_ids is not None
    seq.num_computed_tokens += num_tokens
    manager.cache_blocks(seq)
    return new_ids


def test_allocation_takes_lowest_ids_and_prefers_consecutive_runs():
    pool = BlockPool(8)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.allocate(2) == [3, 4]
    assert pool.release([1]) == 1
    # Block 1 alone is no run of two: the lowest run [5, 6] is taken instead.
    assert pool.allocate(2) == [5, 6]
    assert pool.allocate(1) == [1]
    assert pool.num_free == 1
    with pytest.raises(ValueError, match="only 1 free"):
        pool.allocate(2)


def test_allocation_continues_after_the_given_block_when_free():
    pool = BlockPool(8)
    assert pool.allocate(2) == [0, 1]
    assert pool.allocate(1) == [2]
    pool.release([0])
    assert pool.allocate(2, after=2) == [3, 4]
    # Block 4 follows 3 but is taken: the lowest free id comes next.
    assert pool.allocate(1, after=3) == [0]


def test_reference_counts_decide_when_blocks_return():
    pool = BlockPool(4)
    block_ids = pool.allocate(2)
    pool.touch(block_ids)
    assert [pool.ref_count(b) for b in block_ids] == [2, 2]
    assert pool.release(block_ids) == 0
    assert pool.num_free == 2
    assert pool.release(block_ids) == 2
    assert pool.num_free == 4
    with pytest.raises(ValueError, match="released more often"):
        pool.release([0])


def test_consecutive_runs_split_block_tables():
    assert consecutive_runs([3, 4, 5, 9, 10, 2]) == [(3, 3), (9, 2), (2, 1)]
    assert consecutive_runs([]) == []


def test_prefix_hit_reuses_full_blocks_and_computes_only_the_rest():
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    first = make_seq("a", list(range(10)))
    assert compute(manager, first) == [0, 1, 2]
    second = make_seq("b", list(range(8)) + [50, 51, 52])
    hits, num_hit_tokens = manager.get_computed_blocks(second)
    assert (hits, num_hit_tokens) == ([0, 1], 8)
    assert manager.allocate_slots(second, 3, hits) == [3]
    assert second.block_ids == [0, 1, 3]
    assert second.num_computed_tokens == 8
    assert [manager.pool.ref_count(b) for b in range(4)] == [2, 2, 1, 1]


def test_a_fully_cached_prompt_still_leaves_its_last_token_to_compute():
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    compute(manager, make_seq("a", list(range(12))))
    again = make_seq("b", list(range(8)))
    assert manager.get_computed_blocks(again) == ([0], 4)


def test_hash_hits_are_checked_against_the_tokens():
    pool = BlockPool(4)
    (block_id,) = pool.allocate(1)
    block_hash = hash_block(ROOT_HASH, (1, 2, 3, 4))
    pool.register(block_id, block_hash, (1, 2, 3, 4))
    assert pool.lookup(block_hash, (1, 2, 3, 4)) == block_id
    assert pool.lookup(block_hash, (9, 9, 9, 9)) is None


def test_freed_cached_blocks_stay_reusable_until_evicted_tail_first():
    manager = KVCacheManager(num_blocks=4, block_size=BLOCK_SIZE)
    first = make_seq("a", list(range(10)))
    compute(manager, first)  # blocks [0, 1, 2]; 0 and 1 are full and cached
    assert manager.free(first) == 3
    assert manager.pool.num_free == 4
    assert manager.pool.num_cached_free == 2
    # A revisit hits the cached blocks even though nobody holds them.
    revisit = make_seq("b", list(range(8)) + [7])
    assert manager.get_computed_blocks(revisit) == ([0, 1], 8)
    # Three fresh blocks: free ones first (2, 3), then block 1 (freed before 0: tail first).
    other = make_seq("c", [100 + i for i in range(12)])
    assert compute(manager, other) == [2, 3, 1]
    assert manager.get_computed_blocks(revisit) == ([0], 4)
    manager.free(other)
    assert compute(manager, make_seq("d", [200 + i for i in range(16)])) == [0, 1, 2, 3]


def test_reviving_a_cached_block_counts_against_free_blocks():
    manager = KVCacheManager(num_blocks=3, block_size=BLOCK_SIZE)
    first = make_seq("a", list(range(8)))
    compute(manager, first)
    manager.free(first)
    revisit = make_seq("b", list(range(8)) + [1, 2, 3, 4, 5])
    hits, _ = manager.get_computed_blocks(revisit)
    assert hits == [0, 1]
    # 5 new tokens need 2 more blocks, but only one is left once 0 and 1 are taken back.
    assert manager.allocate_slots(revisit, 5, hits) is None
    assert revisit.block_ids == [] and manager.pool.num_free == 3
    assert manager.allocate_slots(revisit, 4, hits) == [2]


def test_allocate_slots_returns_none_and_changes_nothing_when_short():
    manager = KVCacheManager(num_blocks=2, block_size=BLOCK_SIZE)
    seq = make_seq("a", list(range(12)))
    assert manager.allocate_slots(seq, 12) is None
    assert seq.block_ids == [] and manager.pool.num_free == 2


def test_fork_shares_blocks_and_copies_the_partial_block_on_first_write():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    parent = make_seq("a", list(range(6)))
    compute(manager, parent)  # [0, 1]; block 1 holds 2 of 4 tokens
    child = parent.fork("a/1", SamplingParams(seed=1))
    manager.fork(parent, child)
    assert child.block_ids == [0, 1]
    assert [manager.pool.ref_count(b) for b in (0, 1)] == [2, 2]
    child.token_ids.append(7)
    assert manager.allocate_slots(child, 1) == [2]
    assert child.block_ids == [0, 2]
    assert manager.take_pending_copies() == [(1, 2)]
    assert [manager.pool.ref_count(b) for b in (0, 1, 2)] == [2, 1, 1]
    # The parent now owns block 1 alone and writes in place.
    parent.token_ids.append(8)
    assert manager.allocate_slots(parent, 1) == []
    assert manager.take_pending_copies() == []


def test_fork_at_a_block_boundary_needs_no_copy():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    parent = make_seq("a", list(range(8)))
    compute(manager, parent)
    child = parent.fork("a/1", SamplingParams())
    manager.fork(parent, child)
    child.token_ids.append(9)
    assert manager.allocate_slots(child, 1) == [2]
    assert manager.take_pending_copies() == []
    assert child.block_ids == [0, 1, 2]


def test_prefix_caching_off_never_hits():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE, enable_prefix_caching=False)
    compute(manager, make_seq("a", list(range(12))))
    assert manager.get_computed_blocks(make_seq("b", list(range(12)))) == ([], 0)


def test_decode_growth_keeps_a_sequence_on_consecutive_blocks():
    manager = KVCacheManager(num_blocks=8, block_size=BLOCK_SIZE)
    first, second = make_seq("a", [1, 2, 3]), make_seq("b", [4, 5, 6])
    compute(manager, first)
    compute(manager, second)
    manager.free(first)
    for token in range(6):
        second.token_ids.append(token)
        compute(manager, second, 1)
    assert second.block_ids == [1, 2, 3]
