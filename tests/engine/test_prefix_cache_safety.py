"""The prefix cache hands out only blocks whose KV is the prompt's own: no hit under another parent
(even for a constructed hash collision), and no hit on reserved blocks whose KV has not arrived."""

from __future__ import annotations

import pytest
import torch

from tandem.engine.block_manager import KVCacheManager
from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.sequence import Sequence

torch.set_num_threads(1)

BLOCK_SIZE = 4
# CPython's tuple hash (xxHash-based, 64-bit) and int hash (value mod 2**61 - 1).
_MODULUS = (1 << 61) - 1
_PRIME_1, _PRIME_2, _PRIME_5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
_MASK = (1 << 64) - 1


def _rotate_left(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (64 - bits))) & _MASK


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _last_item_hash(leading_items: tuple, num_items: int, target: int) -> int:
    """The hash the last item of a tuple must have for the tuple to hash to target."""
    acc = _PRIME_5
    for item in leading_items:
        acc = _rotate_left((acc + (hash(item) & _MASK) * _PRIME_2) & _MASK, 31) * _PRIME_1 & _MASK
    final = (target - (num_items ^ (_PRIME_5 ^ 3527539))) & _MASK
    before = _rotate_left(final * pow(_PRIME_1, -1, 1 << 64) & _MASK, 64 - 31)
    return _signed((before - acc) * pow(_PRIME_2, -1, 1 << 64) & _MASK)


def colliding_first_blocks() -> tuple[list[int], list[int]]:
    """Two different first blocks whose (parent, tokens) tuple hashes differ by exactly 2**61 - 1:
    as parents, Python's hash() maps them to the same value, so every later block collides."""
    first = (1, 2, 3, 4)
    first_hash = hash((0, first))
    target = first_hash - _MODULUS if first_hash > 0 else first_hash + _MODULUS
    inner_hash = _last_item_hash((0,), 2, target & _MASK)
    for third in range(1000):
        last = _last_item_hash((10, 11, third), 4, inner_hash & _MASK)
        if -_MODULUS < last < _MODULUS and last != -1:  # an int that hashes to itself
            other = (10, 11, third, last)
            assert hash((0, other)) == target
            return list(first), list(other)
    raise AssertionError("no colliding block found")


def make_seq(request_id: str, token_ids: list[int]) -> Sequence:
    return Sequence(request_id, token_ids, SamplingParams(temperature=0.0))


def compute(manager: KVCacheManager, seq: Sequence) -> list[int]:
    """Allocates and marks computed every token of seq; returns its blocks."""
    assert manager.allocate_slots(seq, seq.num_uncomputed_tokens) is not None
    seq.num_computed_tokens = seq.num_tokens
    manager.cache_blocks(seq)
    return list(seq.block_ids)


def test_a_block_with_the_same_tokens_under_another_parent_is_no_prefix_hit():
    first_a, first_b = colliding_first_blocks()
    shared_tokens = [60, 61, 62, 63]
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    only_b = compute(manager, make_seq("c", first_b + [50, 51, 52, 53, 9]))
    under_a = compute(manager, make_seq("a", first_a + shared_tokens + [9]))
    # B's first block is cached (from "c"); its second block's tokens match A's second block, whose
    # KV was computed after A's first block: it must not count as B's.
    hits, num_hit_tokens = manager.get_computed_blocks(make_seq("b", first_b + shared_tokens + [9]))
    assert under_a[1] not in hits
    assert hits == only_b[:1] and num_hit_tokens == BLOCK_SIZE


def test_block_hashes_are_stable_and_shared_with_the_router():
    from tandem.engine.block_hash import chained_block_hashes
    from tandem.policy.worker_choice import chained_block_hashes as router_hashes

    tokens = list(range(40))
    manager = KVCacheManager(num_blocks=16, block_size=BLOCK_SIZE)
    seq = make_seq("a", tokens)
    compute(manager, seq)
    engine_hashes = seq.block_hashes[: len(tokens) // BLOCK_SIZE]
    assert engine_hashes == chained_block_hashes(tokens, BLOCK_SIZE)
    assert router_hashes(tokens, BLOCK_SIZE) == [int.from_bytes(h[:8], "little") >> 1 for h in engine_hashes]


@pytest.fixture(scope="module")
def engine_dir(tiny_llama_dir):
    return tiny_llama_dir


def test_a_reservation_whose_kv_never_arrived_is_no_prefix_hit(engine_dir):
    config = EngineConfig(block_size=BLOCK_SIZE, num_blocks=32, max_num_seqs=4, max_num_batched_tokens=16)
    prompt = list(range(200, 222))  # 5 full blocks and a partial one
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    expected = LLMEngine(engine_dir, config).generate([prompt], params)[0].token_ids

    engine = LLMEngine(engine_dir, config)
    reserved, num_cached = engine.reserve("never-written", prompt)
    assert num_cached == 0
    # Garbage where the reserved KV would land: reusing it would change the output.
    engine.kv_cache[:, reserved] = 3.0
    again, num_cached_again = engine.reserve("same-prompt", prompt)
    assert num_cached_again == 0 and not set(again) & set(reserved)
    engine.release("never-written")
    engine.release("same-prompt")
    assert engine.reserve("after-release", prompt)[1] == 0
    engine.release("after-release")
    assert engine.generate([prompt], params)[0].token_ids == expected
