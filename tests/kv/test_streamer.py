"""LayerStreamer scheduling: which blocks go out per layer and chunk, commit and abort, thread safety."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from tandem.kv.grants import GrantTable
from tandem.kv.reservation import make_reservation
from tandem.kv.streamer import LayerStreamer
from tandem.kv.transport import KVTransferRefused
from tandem.kv.wire import WireLayout

NUM_LAYERS = 3
BLOCK_SIZE = 4


class RecordingSender:
    """Stands in for UCXKVSender: records what would be posted, commits or refuses to."""

    def __init__(self, refuse_commit: bool = False) -> None:
        self.kv_cache = torch.zeros(NUM_LAYERS, 16, 2, BLOCK_SIZE, 1, 2)
        self.layout = WireLayout.of_tensor(self.kv_cache)
        self.posted: list[tuple[int, list[int], list[int]]] = []
        self.events: list[str] = []
        self.refuse_commit = refuse_commit

    async def post_layer(self, reservation, layer, src_block_ids, dst_block_ids):
        self.posted.append((layer, list(src_block_ids), list(dst_block_ids)))
        done = asyncio.get_running_loop().create_future()
        done.set_result(len(src_block_ids) * self.layout.bytes_per_block)
        return done

    async def commit(self, reservation):
        self.events.append("commit")
        if self.refuse_commit:
            raise KVTransferRefused("layers [2] are incomplete")

    async def abort(self, reservation, reason):
        self.events.append(f"abort: {reason}")


def _reservation(block_ids, num_cached):
    grant = GrantTable(NUM_LAYERS, 16).register("r", block_ids, num_cached, 1e12)
    return make_reservation(grant, "127.0.0.1:1", RecordingSender().layout)


async def test_chunks_send_only_full_blocks_until_the_final_report():
    sender = RecordingSender()
    reservation = _reservation([9, 10, 11, 12, 13], num_cached=1)  # prompt of 18 tokens, block 9 cached
    streamer = LayerStreamer(sender, reservation, [1, 2, 3, 4], num_prompt_tokens=18)
    for end in (7, 13, 18):  # chunk boundaries inside blocks 1 and 3
        for layer in range(NUM_LAYERS):
            streamer.on_layer_done(layer, end)
    result = await streamer.finish()

    per_layer = [[(src, dst) for layer_, src, dst in sender.posted if layer_ == layer] for layer in range(NUM_LAYERS)]
    assert per_layer[0] == [([1, 2], [10, 11]), ([3, 4], [12, 13])]  # full blocks after 13 tokens, then the rest
    assert per_layer == [per_layer[0]] * NUM_LAYERS
    assert sender.events == ["commit"]
    assert result.num_bytes == NUM_LAYERS * 4 * sender.layout.bytes_per_block and result.exposed_seconds >= 0


async def test_a_growing_source_table_streams_each_chunk_as_it_is_computed():
    sender = RecordingSender()
    reservation = _reservation([9, 10, 11, 12], num_cached=0)  # prompt of 16 tokens
    streamer = LayerStreamer(sender, reservation, [], num_prompt_tokens=16)
    for end, source in ((8, [1, 2]), (16, [1, 2, 5, 6])):  # chunked prefill: the table grows
        for layer in range(NUM_LAYERS):
            streamer.on_layer_done(layer, end, src_block_ids=source)
        await asyncio.sleep(0)
    await streamer.finish()
    first_layer = [(src, dst) for layer, src, dst in sender.posted if layer == 0]
    assert first_layer == [([1, 2], [9, 10]), ([5, 6], [11, 12])]


async def test_a_source_table_short_at_the_last_report_fails_the_transfer():
    sender = RecordingSender()
    streamer = LayerStreamer(sender, _reservation([3, 4], 0), [7], num_prompt_tokens=8)
    for layer in range(NUM_LAYERS):
        streamer.on_layer_done(layer)
    with pytest.raises(Exception, match="only 1 source blocks for 2"):
        await asyncio.wait_for(streamer.finish(), 5)
    assert sender.events and sender.events[-1].startswith("abort")


async def test_source_blocks_that_change_after_they_were_sent_fail_the_transfer():
    sender = RecordingSender()
    streamer = LayerStreamer(sender, _reservation([3, 4, 5], 0), [], num_prompt_tokens=12)
    for layer in range(NUM_LAYERS):
        streamer.on_layer_done(layer, 8, src_block_ids=[1, 2, 6])
    await asyncio.sleep(0)
    # Blocks 1 and 2 went out; the prompt is now in other blocks (recomputed after a free).
    for layer in range(NUM_LAYERS):
        streamer.on_layer_done(layer, 12, src_block_ids=[9, 10, 11])
    with pytest.raises(Exception, match="source blocks changed"):
        await asyncio.wait_for(streamer.finish(), 5)
    assert "commit" not in sender.events and sender.events[-1].startswith("abort")


async def test_reports_from_a_compute_thread_are_all_sent():
    sender = RecordingSender()
    reservation = _reservation([3, 4], num_cached=0)
    streamer = LayerStreamer(sender, reservation, [7, 8], num_prompt_tokens=8)
    thread = threading.Thread(target=lambda: [streamer.on_layer_done(layer) for layer in range(NUM_LAYERS)])
    thread.start()
    await asyncio.wait_for(streamer.finish(), 5)
    thread.join()
    assert sorted(layer for layer, _, _ in sender.posted) == list(range(NUM_LAYERS))


async def test_refused_commit_aborts_and_raises():
    sender = RecordingSender(refuse_commit=True)
    streamer = LayerStreamer(sender, _reservation([3], 0), [7], num_prompt_tokens=4)
    for layer in range(NUM_LAYERS):
        streamer.on_layer_done(layer)
    with pytest.raises(KVTransferRefused, match="incomplete"):
        await streamer.finish()
    assert sender.events[0] == "commit" and sender.events[1].startswith("abort: transfer failed")


async def test_abort_releases_a_waiting_finish():
    sender = RecordingSender()
    streamer = LayerStreamer(sender, _reservation([3], 0), [7], num_prompt_tokens=4)
    finish = asyncio.create_task(streamer.finish())
    await asyncio.sleep(0)
    await streamer.abort("client gone")
    with pytest.raises(Exception, match="aborted"):
        await finish
    assert sender.events == ["abort: client gone"]


async def test_bad_arguments_are_refused():
    sender = RecordingSender()
    reservation = _reservation([3, 4], 0)
    with pytest.raises(ValueError, match="source blocks"):
        LayerStreamer(sender, reservation, [7, 8, 9], num_prompt_tokens=8)
    with pytest.raises(ValueError, match="9-token prompt needs 3 blocks"):
        LayerStreamer(sender, reservation, [7, 8], num_prompt_tokens=9)
    streamer = LayerStreamer(sender, reservation, [7, 8], num_prompt_tokens=5)
    with pytest.raises(ValueError, match="layer 3"):
        streamer.on_layer_done(3)
