"""A waiting request that cannot be admitted (reservations hold the blocks) stalls the engine: the
engine thread sleeps instead of stepping, and wakes when a release frees the blocks."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import CapacityError, LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.serving.engine_loop import EngineLoop

torch.set_num_threads(1)

CONFIG = dict(block_size=4, num_blocks=12, max_num_seqs=4, max_num_batched_tokens=16)
HELD_PROMPT = list(range(200, 237))  # 10 of the 12 blocks
BLOCKED_PROMPT = list(range(300, 320))  # needs 5 blocks, plus one per 4 new tokens
PARAMS = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def test_a_step_that_can_admit_nothing_stalls_until_something_changes(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    engine.reserve("held", HELD_PROMPT)
    engine.add_request("blocked", BLOCKED_PROMPT, PARAMS)
    assert not engine.is_stalled
    assert engine.step() == []
    assert engine.is_stalled and engine.has_unfinished_requests()
    engine.add_request("also-blocked", BLOCKED_PROMPT[:-1], PARAMS)  # a change: worth one more try
    assert not engine.is_stalled
    assert engine.step() == [] and engine.is_stalled
    engine.release("held")
    assert not engine.is_stalled
    finished = set()
    while engine.has_unfinished_requests():
        finished |= {output.request_id for output in engine.step() if output.finished}
    assert finished == {"blocked", "also-blocked"}


def test_generate_refuses_what_the_held_blocks_leave_no_room_for(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    engine.reserve("held", HELD_PROMPT)
    with pytest.raises(CapacityError, match="hold the KV blocks"):
        engine.generate([BLOCKED_PROMPT], PARAMS)


async def test_the_engine_thread_sleeps_while_no_request_can_be_admitted(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(**CONFIG))
    num_steps = 0
    step = engine.step

    def counting_step():
        nonlocal num_steps
        num_steps += 1
        return step()

    engine.step = counting_step
    loop = EngineLoop(engine)
    loop.start()
    try:
        await loop.call(engine.reserve, "held", HELD_PROMPT)
        outputs = loop.open_stream("blocked")
        await loop.call(engine.add_request, "blocked", BLOCKED_PROMPT, PARAMS)
        await loop.call(engine.stats)  # a command after the first stalled step
        steps_when_blocked = num_steps
        for _ in range(20):  # nothing changes meanwhile: a spinning thread would step thousands of times
            await asyncio.sleep(0.02)
        assert num_steps - steps_when_blocked <= 1
        await loop.call(engine.release, "held")
        output = await asyncio.wait_for(outputs.get(), timeout=60)
        assert output.request_id == "blocked" and output.new_token_ids
    finally:
        await loop.stop()
