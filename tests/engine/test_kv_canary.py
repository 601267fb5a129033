"""Canary mode: free KV blocks hold a pattern; a write into a released block is caught when the
block is taken again or by a sweep, logged at ERROR and counted, and normal work trips nothing."""

from __future__ import annotations

import logging

import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.telemetry.metrics import default_metrics

torch.set_num_threads(1)

CONFIG = dict(block_size=4, max_num_seqs=4, max_num_batched_tokens=16)
PROMPT = list(range(200, 222))  # 6 blocks


def violations() -> float:
    return default_metrics().registry.get_sample_value("tandem_kv_canary_violations_total") or 0.0


def test_a_write_into_a_released_block_is_caught_by_a_sweep_and_counted_once(tiny_llama_dir, caplog):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=16, debug_kv_canary=True, **CONFIG))
    before = violations()
    blocks, _ = engine.reserve("r", PROMPT)
    engine.kv_cache[:, blocks] = 1.0  # the reservation's KV arrives
    engine.release("r")
    assert engine.sweep_kv_canary() == 0
    engine.kv_cache[2, blocks[3], 1, 0, 0, :3] = 0.25  # a transfer that outlived its reservation
    with caplog.at_level(logging.ERROR, logger="tandem.engine.kv_canary"):
        assert engine.sweep_kv_canary() == 1
    assert violations() == before + 1
    assert any(f"[{blocks[3]}]" in record.getMessage() and record.levelno == logging.ERROR
               for record in caplog.records)
    assert engine.sweep_kv_canary() == 0  # reported once, then armed again
    assert violations() == before + 1


def test_a_write_into_a_released_block_is_caught_when_the_block_is_taken_again(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=16, debug_kv_canary=True, **CONFIG))
    blocks, _ = engine.reserve("r", PROMPT)
    engine.release("r")
    engine.kv_cache[0, blocks[0], 0, 1] = 7.0
    before = violations()
    again, _ = engine.reserve("again", PROMPT)
    assert blocks[0] in again
    assert violations() == before + 1


def test_normal_work_trips_no_canary_and_computes_the_same(tiny_llama_dir):
    prompts = [PROMPT, list(range(300, 337)), PROMPT[:9], list(range(400, 413))]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    expected = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CONFIG)).generate(prompts, params)
    # A small pool: requests are preempted and recomputed, blocks are freed and taken again.
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=20, debug_kv_canary=True, **CONFIG))
    before = violations()
    outputs = engine.generate(prompts, params)
    assert engine.stats().num_preemptions > 0
    engine.add_request("parent", PROMPT, params)
    first = next(o for _ in range(3) for o in engine.step())
    engine.fork("parent", "child", params)
    while engine.has_unfinished_requests():
        engine.step()
    assert [o.token_ids for o in outputs] == [e.token_ids for e in expected]
    assert first.new_token_ids == expected[0].token_ids[:1]
    assert engine.sweep_kv_canary() == 0 and violations() == before


def test_without_canary_mode_nothing_is_filled_or_checked(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=16, **CONFIG))
    blocks, _ = engine.reserve("r", PROMPT)
    engine.release("r")
    engine.kv_cache[0, blocks[0]] = 3.0
    assert engine.sweep_kv_canary() == 0
    assert bool((engine.kv_cache[1] == 0).all())
