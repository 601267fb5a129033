"""A prefill whose KV is being sent keeps its blocks: when the KV pool runs short, the prefill is
never preempted under a send that has not read its blocks yet, so the receiver gets the prompt's
real KV and decodes exactly what the engine alone makes.

The sends are read when the event loop gets to them, as UCX does: here the loop runs only between
the test's engine steps, so a send posted in one step reads the blocks after the next step ran.
"""

from __future__ import annotations

import asyncio

import torch

from tandem.api.v1 import worker_pb2
from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.engine.sampling_params import SamplingParams
from tandem.kv.streamer import LayerStreamer
from tandem.kv.wire import WireLayout

torch.set_num_threads(1)

BLOCK_SIZE = 4
CONFIG = dict(block_size=BLOCK_SIZE, max_num_seqs=4, max_num_batched_tokens=16)
FILLER_PROMPT = list(range(600, 648))  # a reservation holding 12 of the prefill engine's 16 blocks
DECODING_PROMPT = list(range(500, 508))
PROMPT = list(range(200, 230))  # 30 tokens: 8 blocks
NUM_NEW = 8


def greedy(num_new: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=num_new, ignore_eos=True)


class CopyingSender:
    """Stands in for the UCX sender between two engines in one process: a posted layer run reads the
    source blocks when the event loop runs the post, as a network send reads them when it goes."""

    def __init__(self, source: torch.Tensor, destination: torch.Tensor) -> None:
        self.kv_cache = source
        self.destination = destination
        self.layout = WireLayout.of_tensor(source)
        self.is_committed = False

    async def post_layer(self, reservation, layer, src_block_ids, dst_block_ids):
        self.destination[layer, list(dst_block_ids)] = self.kv_cache[layer, list(src_block_ids)]
        done = asyncio.get_running_loop().create_future()
        done.set_result(len(src_block_ids) * self.layout.bytes_per_block)
        return done

    async def commit(self, reservation) -> None:
        self.is_committed = True

    async def abort(self, reservation, reason: str) -> None:
        raise AssertionError(f"the transfer was aborted: {reason}")


def prompt_kv(engine: LLMEngine, block_ids: list[int]) -> torch.Tensor:
    """The KV of PROMPT's positions in these blocks: [layers, positions, 2, heads, head_dim]."""
    blocks = engine.kv_cache[:, block_ids]  # [layers, blocks, 2, block_size, heads, head_dim]
    per_position = blocks.permute(0, 1, 3, 2, 4, 5).flatten(1, 2)
    return per_position[:, : len(PROMPT)].clone()


async def test_a_prefill_short_of_blocks_is_not_preempted_under_its_in_flight_sends(tiny_llama_dir):
    alone = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CONFIG))
    alone.add_request("alone", PROMPT, greedy(1), prefill_only=True)
    while alone.has_unfinished_requests():
        alone.step()
    expected_kv = prompt_kv(alone, alone.block_ids("alone"))
    expected_tokens = alone.generate([PROMPT], greedy(NUM_NEW))[0].token_ids

    prefill = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=16, **CONFIG))
    decode = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=64, **CONFIG))
    target_blocks, num_cached = decode.reserve("r", PROMPT)
    reservation = worker_pb2.Reservation(request_id="r", block_ids=target_blocks, num_cached_blocks=num_cached)
    sender = CopyingSender(prefill.kv_cache, decode.kv_cache)
    streamers: dict[str, LayerStreamer] = {}

    def on_layer(layer: int, spans) -> None:  # what the prefill worker's layer hook does
        for request_id, block_ids, _start, end in spans:
            if request_id == "r":
                source = block_ids[: len(target_blocks)]
                if request_id not in streamers:
                    streamers[request_id] = LayerStreamer(sender, reservation, source, len(PROMPT))
                streamers[request_id].on_layer_done(layer, end, src_block_ids=source)

    prefill.set_layer_hook(on_layer)
    prefill.reserve("filler", FILLER_PROMPT)
    prefill.add_request("decoding", DECODING_PROMPT, greedy(4))
    prefill.add_request("r", PROMPT, greedy(1), prefill_only=True)
    first = []
    for step in range(40):
        first += [output for output in prefill.step() if output.request_id == "r"]
        if step >= 1:  # the network lags one step behind the engine
            for _ in range(4):
                await asyncio.sleep(0)
        if step == 1:
            prefill.release("filler")
        if first and not prefill.has_unfinished_requests():
            break
    result = await streamers["r"].finish()
    assert sender.is_committed and result.num_bytes > 0

    torch.testing.assert_close(prompt_kv(decode, target_blocks), expected_kv, atol=1e-4, rtol=1e-4)
    decode.add_prefilled_request("r", PROMPT, first[0].new_token_ids[0], greedy(NUM_NEW))
    tokens = list(first[0].new_token_ids)
    while decode.has_unfinished_requests():
        tokens += [t for output in decode.step() for t in output.new_token_ids]
    assert tokens == expected_tokens
    assert prefill.release("r") > 0


def test_prefill_only_requests_take_their_whole_prompt_at_admission_and_are_never_preempted(tiny_llama_dir):
    engine = LLMEngine(tiny_llama_dir, EngineConfig(num_blocks=16, **CONFIG))
    engine.reserve("filler", FILLER_PROMPT)
    engine.add_request("decoding", DECODING_PROMPT, greedy(12))
    engine.add_request("r", PROMPT, greedy(1), prefill_only=True)
    engine.step()
    # 30 prompt tokens need 8 blocks: with 2 left after "decoding", "r" waits instead of starting.
    assert len(engine.block_ids("r")) == 0 and engine.stats().num_waiting == 1
    engine.release("filler")
    engine.step()
    assert len(engine.block_ids("r")) == 8
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.stats().num_preemptions == 0
