"""Layer-wise streaming: send each layer's KV while later layers are still computing.

The prefill worker's compute thread calls `on_layer_done(layer, num_computed_tokens)` from the
engine's layer hook; the call only records a CUDA event (on CUDA) and hands the layer to the
event loop that owns the UCX endpoints (`call_soon_threadsafe`), so compute never waits on the
network and the loop never runs torch compute. UCX runs in thread-progress mode with futures
(see ucx_runtime.py), so a waiting send costs no CPU that the compute thread could use.
With chunked prefill, a layer is reported once per chunk: only blocks already full are sent,
and the final report (all prompt tokens computed, or `num_computed_tokens=None`) sends the rest.
Engine hook adapter: for each (request_id, block_ids, start, end) span of the step, call
`streamers[request_id].on_layer_done(layer, end)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import torch

from tandem.api.v1 import worker_pb2
from tandem.kv.transport import KVSender, KVTransferError, TransferResult

logger = logging.getLogger("tandem.kv.streamer")

_CUDA_POLL_SECONDS = 0.0002


def check_transfer_fits(reservation: worker_pb2.Reservation, num_prompt_tokens: int, block_size: int) -> None:
    """Checks that a reservation's blocks are exactly the prompt's blocks, cached ones first, and that
    at least the last prompt token's block is sent; raises ValueError naming what does not fit."""
    if num_prompt_tokens <= 0:
        raise ValueError(f"request {reservation.request_id!r} has an empty prompt: nothing to send")
    num_blocks = len(reservation.block_ids)
    num_needed = -(-num_prompt_tokens // block_size)
    if num_needed != num_blocks:
        raise ValueError(f"reservation of request {reservation.request_id!r} has {num_blocks} blocks of "
                         f"{block_size} tokens, but its {num_prompt_tokens}-token prompt needs {num_needed} blocks")
    if reservation.num_cached_blocks > (num_prompt_tokens - 1) // block_size:
        raise ValueError(f"reservation of request {reservation.request_id!r} counts {reservation.num_cached_blocks} "
                         f"cached blocks of its {num_prompt_tokens}-token prompt: the last token's block is "
                         f"always computed and sent")
    if len(set(reservation.block_ids)) != num_blocks:
        raise ValueError(f"reservation of request {reservation.request_id!r} lists a block more than once")


class LayerStreamer:
    """Streams one request's KV into its reservation, layer by layer; then commits."""

    def __init__(self, sender: KVSender, reservation: worker_pb2.Reservation, src_block_ids: Sequence[int],
                 num_prompt_tokens: int, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.sender = sender
        self.reservation = reservation
        # With chunked prefill the source table grows chunk by chunk (see on_layer_done).
        self.src_block_ids = list(src_block_ids)
        self.dst_block_ids = list(reservation.block_ids[reservation.num_cached_blocks:])
        if len(self.src_block_ids) > len(self.dst_block_ids):
            raise ValueError(f"{len(self.src_block_ids)} source blocks for {len(self.dst_block_ids)} "
                             f"non-cached reserved blocks of request {reservation.request_id!r}")
        check_transfer_fits(reservation, num_prompt_tokens, sender.layout.block_size)
        self.num_layers = sender.layout.num_layers
        self.num_prompt_tokens = num_prompt_tokens
        self._loop = loop or asyncio.get_running_loop()
        self._is_cuda = sender.kv_cache.is_cuda
        self._num_sent_blocks = [0] * self.num_layers  # touched on the loop thread only
        self._is_layer_complete = [False] * self.num_layers
        self._all_layers_complete = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        # One future per posted layer part: the bytes it sent, once its payloads have left.
        self._completions: list[asyncio.Future] = []
        self._last_layer_done_at = 0.0
        self._is_aborted = False
        self._failure = ""
        self._abort_task: asyncio.Future | None = None

    def on_layer_done(self, layer: int, num_computed_tokens: int | None = None,
                      src_block_ids: Sequence[int] | None = None) -> None:
        """Thread-safe: `layer` has written the KV of the first `num_computed_tokens` prompt tokens (None: all).

        src_block_ids, when given, is the source table as it stands now (it only grows); the final
        report needs one source block for every non-cached reserved block.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is outside 0..{self.num_layers - 1}")
        ready = None
        if self._is_cuda:
            # Kernels are only queued when the hook runs: the send waits for this event.
            ready = torch.cuda.Event()
            ready.record()
        source = None if src_block_ids is None else list(src_block_ids)
        self._loop.call_soon_threadsafe(self._schedule, layer, num_computed_tokens, ready,
                                        time.perf_counter(), source)

    def _schedule(self, layer: int, num_computed_tokens: int | None, ready: object, done_at: float,
                  source: list[int] | None = None) -> None:
        if self._is_aborted or self._failure or self._is_layer_complete[layer]:
            return
        if source is not None:
            num_sent = max(self._num_sent_blocks)
            if source[:num_sent] != self.src_block_ids[:num_sent]:
                # Blocks already sent would be sent from elsewhere: the receiver could mix KV.
                self._fail(f"the prefill's source blocks changed after {num_sent} were sent")
                return
            if len(source) > len(self.src_block_ids):
                self.src_block_ids = source[:len(self.dst_block_ids)]
        is_final = num_computed_tokens is None or num_computed_tokens >= self.num_prompt_tokens
        if is_final and len(self.src_block_ids) < len(self.dst_block_ids):
            self._fail(f"only {len(self.src_block_ids)} source blocks for {len(self.dst_block_ids)} "
                       f"reserved blocks at the last layer report")
            return
        if is_final:
            num_ready = len(self.dst_block_ids)
        else:
            num_full_blocks = num_computed_tokens // self.sender.layout.block_size
            num_ready = min(len(self.src_block_ids),
                            max(0, num_full_blocks - self.reservation.num_cached_blocks))
        start = self._num_sent_blocks[layer]
        if num_ready > start:
            self._num_sent_blocks[layer] = num_ready
            self._tasks.append(asyncio.create_task(self._send(layer, start, num_ready, ready)))
        if is_final:
            self._is_layer_complete[layer] = True
            self._last_layer_done_at = max(self._last_layer_done_at, done_at)
            if all(self._is_layer_complete):
                self._all_layers_complete.set()

    async def _send(self, layer: int, start: int, stop: int, ready: object) -> None:
        if ready is not None:
            while not ready.query():
                await asyncio.sleep(_CUDA_POLL_SECONDS)
        self._completions.append(await self.sender.post_layer(
            self.reservation, layer, self.src_block_ids[start:stop], self.dst_block_ids[start:stop]))

    async def finish(self) -> TransferResult:
        """Waits for every layer, sends them all and commits; aborts the grant if anything failed."""
        if self._is_aborted:
            raise KVTransferError(f"transfer of request {self.reservation.request_id!r} was aborted")
        await self._all_layers_complete.wait()
        if self._is_aborted:
            raise KVTransferError(f"transfer of request {self.reservation.request_id!r} was aborted"
                                  + (f": {self._failure}" if self._failure else ""))
        try:
            await asyncio.gather(*self._tasks)  # every run is posted: the commit may follow at once
            commit = asyncio.ensure_future(self.sender.commit(self.reservation))
            sent = await asyncio.gather(*self._completions, return_exceptions=True)
            await asyncio.wait([commit])
            errors = [result for result in sent if isinstance(result, BaseException)]
            if errors:
                if not commit.cancelled():
                    commit.exception()  # the send error explains a refused commit better
                raise errors[0]
            await commit
        except Exception as error:
            await self.abort(f"transfer failed: {error}")
            raise
        return TransferResult(sum(sent), time.perf_counter() - self._last_layer_done_at)

    def _fail(self, reason: str) -> None:
        """Ends the transfer from the loop thread: finish() raises with this reason."""
        logger.error("KV transfer of request %r failed: %s", self.reservation.request_id, reason)
        self._failure = reason
        # Held apart from _tasks: abort() cancels those, and must not cancel itself.
        self._abort_task = asyncio.ensure_future(self.abort(reason))

    async def abort(self, reason: str) -> None:
        """Stops sending and tells the receiver to free the blocks (best effort)."""
        if self._is_aborted:
            return
        self._is_aborted = True
        self._all_layers_complete.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._completions, return_exceptions=True)
        try:
            await self.sender.abort(self.reservation, reason)
        except KVTransferError as error:
            logger.info("abort of request %r not delivered: %s", self.reservation.request_id, error)
