"""Worker choice: load and prefix locality, the hot-worker guard, disaggregation, block hashes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tandem.policy.worker_choice import (
    NoWorkerAvailable,
    PrefixIndex,
    WorkerChoiceConfig,
    WorkerSnapshot,
    chained_block_hashes,
    choose_decode_worker,
    choose_prefill_worker,
    should_disaggregate,
)


def worker(worker_id: str, running: int = 0, waiting: int = 0, queued_tokens: int = 0,
           used: int = 0, total: int = 1000, accepting: bool = True) -> WorkerSnapshot:
    return WorkerSnapshot(worker_id, running, waiting, queued_tokens, total, used, accepting)


def test_least_loaded_decode_worker_without_locality():
    workers = [worker("a", running=10), worker("b", running=3), worker("c", running=3, used=500)]
    choice = choose_decode_worker(workers, [1, 2, 3], PrefixIndex(), WorkerChoiceConfig())
    assert choice.worker_id == "b"  # c has the same sequences but half its KV in use
    assert choice.num_cached_blocks == 0 and "least loaded" in choice.reason


def test_prefix_locality_wins_within_the_load_bound():
    index = PrefixIndex()
    index.record("a", [11, 12, 13, 14])
    index.record("b", [11, 12])
    workers = [worker("a", running=6), worker("b", running=5), worker("c", running=4)]
    choice = choose_decode_worker(workers, [11, 12, 13, 99], index, WorkerChoiceConfig())
    assert choice.worker_id == "a" and choice.num_cached_blocks == 3
    assert "prefix locality" in choice.reason


def test_hot_worker_guard_sends_load_elsewhere():
    index = PrefixIndex()
    index.record("hot", [1, 2, 3])
    config = WorkerChoiceConfig(locality_load_factor=1.5, locality_load_slack=2.0)
    # Bound = 1.5 * 10 + 2 = 17: a cached worker at 17 still wins, at 18 it does not.
    within = [worker("hot", running=17), worker("cold", running=10)]
    assert choose_decode_worker(within, [1, 2, 3], index, config).worker_id == "hot"
    over = [worker("hot", running=18), worker("cold", running=10)]
    choice = choose_decode_worker(over, [1, 2, 3], index, config)
    assert choice.worker_id == "cold" and "over the load bound" in choice.reason


def test_repeated_prefix_spreads_once_the_hot_worker_fills():
    index, config = PrefixIndex(), WorkerChoiceConfig(kv_usage_weight=0.0)
    running = {"w0": 0, "w1": 0, "w2": 0, "w3": 0}
    for _ in range(40):
        workers = [worker(w, running=n) for w, n in running.items()]
        choice = choose_decode_worker(workers, [7, 8], index, config)
        index.record(choice.worker_id, [7, 8])
        running[choice.worker_id] += 1
    assert max(running.values()) <= 1.5 * min(running.values()) + 4 + 1
    assert min(running.values()) >= 5


def test_full_kv_and_not_accepting_workers_are_skipped():
    index = PrefixIndex()
    index.record("full", [1, 2])
    workers = [worker("full", used=990), worker("off", accepting=False), worker("ok", running=1)]
    assert choose_decode_worker(workers, [1, 2], index, WorkerChoiceConfig()).worker_id == "ok"
    with pytest.raises(NoWorkerAvailable, match="no decode worker"):
        choose_decode_worker([worker("off", accepting=False)], [], index, WorkerChoiceConfig())


def test_ties_spread_over_workers_deterministically():
    workers = [worker(f"w{i}") for i in range(4)]
    picks = [choose_decode_worker(workers, [h], PrefixIndex(), WorkerChoiceConfig()).worker_id
             for h in range(40)]
    assert len(set(picks)) == 4
    again = [choose_decode_worker(workers, [h], PrefixIndex(), WorkerChoiceConfig()).worker_id
             for h in range(40)]
    assert picks == again


def test_prefill_worker_by_queued_prompt_tokens():
    workers = [worker("a", queued_tokens=9000), worker("b", queued_tokens=2000, running=3),
               worker("c", queued_tokens=2000, running=1), worker("d", accepting=False)]
    choice = choose_prefill_worker(workers, 700, WorkerChoiceConfig())
    assert choice.worker_id == "c" and "2000" in choice.reason
    with pytest.raises(NoWorkerAvailable, match="no prefill worker"):
        choose_prefill_worker([worker("d", accepting=False)], 10, WorkerChoiceConfig())
    with pytest.raises(ValueError, match="num_prompt_tokens"):
        choose_prefill_worker(workers, -1, WorkerChoiceConfig())


def test_conditional_disaggregation():
    config = WorkerChoiceConfig(min_disaggregate_prompt_tokens=256, prefill_saturation_tokens=10_000)
    idle = [worker("p0", queued_tokens=500), worker("p1", queued_tokens=4000)]
    busy = [worker("p0", queued_tokens=12_000), worker("p1", queued_tokens=20_000)]
    short, reason = should_disaggregate(100, idle, config)
    assert not short and "short uncached prompt" in reason
    long_ok, reason = should_disaggregate(2000, idle, config)
    assert long_ok and "disaggregate" in reason
    saturated, reason = should_disaggregate(2000, busy, config)
    assert not saturated and "saturated" in reason
    none, reason = should_disaggregate(2000, [worker("x", accepting=False)], config)
    assert not none and "no prefill worker" in reason


def test_prefix_index_matches_leading_blocks_and_evicts_lru():
    index = PrefixIndex(max_blocks_per_worker=4)
    index.record("a", [1, 2, 3])
    index.record("b", [1, 2, 5, 6])
    assert index.match([1, 2, 3, 4]) == {"a": 3, "b": 2}
    assert index.match([9, 1]) == {}
    index.record("a", [7, 8])  # evicts 1 (least recent) then... a keeps 4 blocks
    assert index.num_blocks("a") == 4
    assert index.match([1, 2, 3]) == {"b": 2}  # a lost its leading block
    index.forget("b")
    assert index.match([1, 2]) == {} and index.num_blocks("b") == 0
    with pytest.raises(ValueError, match="max_blocks_per_worker"):
        PrefixIndex(max_blocks_per_worker=0)


def test_chained_block_hashes_are_chained_and_stable_across_processes():
    tokens = list(range(100, 140))
    hashes = chained_block_hashes(tokens, 16)
    assert len(hashes) == 2  # the partial last block is not hashed
    other = chained_block_hashes([0] + tokens[1:], 16)
    assert other[0] != hashes[0] and other[1] != hashes[1]  # a changed prefix changes every block
    assert chained_block_hashes(tokens[:32] + [5, 6], 16) == hashes
    code = ("from tandem.policy.worker_choice import chained_block_hashes as h; "
            "print(h(list(range(100, 140)), 16))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == str(hashes)
    assert all(0 <= h < 2**63 for h in hashes)
    with pytest.raises(ValueError, match="block_size"):
        chained_block_hashes(tokens, 0)


def test_bad_snapshots_and_settings_are_rejected():
    with pytest.raises(ValueError, match="num_running"):
        worker("a", running=-1)
    with pytest.raises(ValueError, match="KV blocks used"):
        worker("a", used=20, total=10)
    with pytest.raises(ValueError, match="locality_load_factor"):
        WorkerChoiceConfig(locality_load_factor=0.5)
    with pytest.raises(ValueError, match="num_uncached_prompt_tokens"):
        should_disaggregate(-5, [], WorkerChoiceConfig())
