"""Scheduler: decode-first batching, chunked prefill, sequence limits and preemption (no model)."""

from __future__ import annotations

import pytest

from tandem.engine.block_manager import KVCacheManager
from tandem.engine.engine_config import EngineConfig
from tandem.engine.sampling_params import SamplingParams
from tandem.engine.scheduler import Scheduler
from tandem.engine.sequence import FinishReason, Sequence, SequenceStatus


def make_scheduler(num_blocks=64, block_size=4, **limits) -> Scheduler:
    config = EngineConfig(block_size=block_size, num_blocks=num_blocks, **limits)
    return Scheduler(config, KVCacheManager(num_blocks, block_size))


def add(scheduler: Scheduler, request_id: str, num_prompt_tokens: int, first_token=0) -> Sequence:
    seq = Sequence(request_id, list(range(first_token, first_token + num_prompt_tokens)),
                   SamplingParams(temperature=0.0))
    scheduler.add(seq)
    return seq


def run_step(scheduler: Scheduler) -> list[tuple[str, int]]:
    """Schedules one step, marks it computed and appends token 7 to every sequence that samples."""
    batch = scheduler.schedule()
    for seq in scheduler.update_after_step(batch):
        seq.append_token(7)
    return [(seq.request_id, n) for seq, n in zip(batch.seqs, batch.num_new_tokens)]


def test_decodes_come_first_then_prefill_chunks_within_the_token_budget():
    scheduler = make_scheduler(max_num_batched_tokens=8, max_num_seqs=4)
    add(scheduler, "a", 5)
    assert run_step(scheduler) == [("a", 5)]
    add(scheduler, "b", 20, first_token=100)
    assert run_step(scheduler) == [("a", 1), ("b", 7)]
    add(scheduler, "c", 3, first_token=200)
    assert run_step(scheduler) == [("a", 1), ("b", 7)]
    assert scheduler.num_queued_prompt_tokens() == 6 + 3
    assert run_step(scheduler) == [("a", 1), ("b", 6), ("c", 1)]
    assert run_step(scheduler) == [("a", 1), ("b", 1), ("c", 2)]
    assert run_step(scheduler) == [("a", 1), ("b", 1), ("c", 1)]
    assert scheduler.num_queued_prompt_tokens() == 0


def test_max_num_seqs_caps_the_running_batch():
    scheduler = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    for i, request_id in enumerate("abc"):
        add(scheduler, request_id, 3, first_token=100 * i)
    assert run_step(scheduler) == [("a", 3), ("b", 3)]
    assert [seq.request_id for seq in scheduler.waiting] == ["c"]
    scheduler.finish(scheduler.running[0], FinishReason.STOP)
    assert run_step(scheduler) == [("b", 1), ("c", 3)]


def test_a_waiting_request_that_does_not_fit_blocks_later_ones():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    add(scheduler, "a", 8)
    add(scheduler, "big", 12, first_token=100)
    add(scheduler, "small", 2, first_token=200)
    assert run_step(scheduler) == [("a", 8)]
    assert [seq.request_id for seq in scheduler.waiting] == ["big", "small"]


def test_the_newest_running_request_is_preempted_when_blocks_run_out():
    scheduler = make_scheduler(num_blocks=4, max_num_batched_tokens=64)
    old = add(scheduler, "old", 4)
    new = add(scheduler, "new", 3, first_token=100)
    assert run_step(scheduler) == [("old", 4), ("new", 3)]  # blocks [0] and [1]
    assert run_step(scheduler) == [("old", 1), ("new", 1)]  # old takes block 2, new fills 1
    assert run_step(scheduler) == [("old", 1), ("new", 1)]  # new takes block 3
    assert old.block_ids == [0, 2] and new.block_ids == [1, 3]
    for _ in range(2):
        assert run_step(scheduler) == [("old", 1), ("new", 1)]
    # old needs a third block and none is free: new gives its blocks back and waits.
    assert run_step(scheduler) == [("old", 1)]
    assert new.status is SequenceStatus.WAITING and new.block_ids == []
    assert new.num_computed_tokens == 0 and new.num_output_tokens == 5
    assert list(scheduler.waiting) == [new]
    scheduler.finish(old, FinishReason.STOP)
    # Recomputation covers the prompt and the kept outputs (8 tokens), minus its first block,
    # which is still in the prefix cache.
    assert new.num_tokens == 8
    assert run_step(scheduler) == [("new", 4)]
    assert new.num_output_tokens == 6


def test_a_request_preempts_itself_when_it_is_the_newest():
    scheduler = make_scheduler(num_blocks=2, max_num_batched_tokens=64)
    first = add(scheduler, "first", 4)
    second = add(scheduler, "second", 4, first_token=50)
    run_step(scheduler)
    batch = scheduler.schedule()
    # Both need a new block and none is free: the newest goes, then the oldest gets its block.
    assert [seq.request_id for seq in batch.seqs] == ["first"]
    assert batch.num_preempted == 1
    assert second.status is SequenceStatus.WAITING
    assert first.block_ids == [0, 1]


def test_finish_frees_blocks_but_prefill_only_keeps_them():
    scheduler = make_scheduler()
    done, held = add(scheduler, "done", 5), add(scheduler, "held", 5, first_token=100)
    run_step(scheduler)
    assert scheduler.finish(done, FinishReason.STOP) == 2
    assert scheduler.finish(held, FinishReason.PREFILLED, keep_blocks=True) == 0
    assert held.status is SequenceStatus.PREFILLED and held.block_ids == [2, 3]
    assert not scheduler.has_work()


@pytest.mark.parametrize("limits, message", [
    ({"max_num_seqs": 0}, "max_num_seqs"),
    ({"max_num_batched_tokens": 4, "max_num_seqs": 8}, "max_num_batched_tokens"),
    ({"kv_cache_memory_fraction": 1.5}, "kv_cache_memory_fraction"),
    ({"dtype": "int8"}, "unsupported dtype"),
])
def test_bad_engine_config_is_refused(limits, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**limits)
