"""check_transfer_fits: a reservation must hold exactly its prompt's blocks, checked before any
compute (a prefill worker refuses a bad one with INVALID_ARGUMENT instead of failing its batch)."""

from __future__ import annotations

import pytest

from tandem.api.v1 import worker_pb2
from tandem.kv.streamer import check_transfer_fits

BLOCK_SIZE = 16


def reservation(block_ids: list[int], num_cached_blocks: int = 0) -> worker_pb2.Reservation:
    return worker_pb2.Reservation(request_id="r", block_ids=block_ids, num_cached_blocks=num_cached_blocks)


@pytest.mark.parametrize("num_prompt_tokens, block_ids, num_cached", [
    (1, [5], 0), (16, [5], 0), (17, [5, 9], 1), (48, [1, 2, 3], 2), (49, [1, 2, 3, 4], 3),
])
def test_reservations_that_hold_exactly_the_prompt_fit(num_prompt_tokens, block_ids, num_cached):
    check_transfer_fits(reservation(block_ids, num_cached), num_prompt_tokens, BLOCK_SIZE)


@pytest.mark.parametrize("num_prompt_tokens, block_ids, num_cached, message", [
    (100, [1, 2, 3], 0, "has 3 blocks of 16 tokens, but its 100-token prompt needs 7 blocks"),
    (16, [1, 2], 0, "16-token prompt needs 1 blocks"),
    (0, [], 0, "empty prompt"),
    (32, [1, 2], 2, "counts 2 cached blocks of its 32-token prompt"),
    (33, [1, 2, 3], 3, "the last token's block is always computed"),
    (40, [4, 5, 4], 0, "lists a block more than once"),
])
def test_reservations_that_do_not_fit_are_refused_with_the_reason(num_prompt_tokens, block_ids, num_cached,
                                                                   message):
    with pytest.raises(ValueError, match=message):
        check_transfer_fits(reservation(block_ids, num_cached), num_prompt_tokens, BLOCK_SIZE)
