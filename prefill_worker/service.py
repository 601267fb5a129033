"""The prefill worker's gRPC service: compute prompts and push their KV to decode workers.

Prompts are batched by the engine's scheduler. While a prompt's last chunk runs, the engine's
layer hook hands each finished layer to a LayerStreamer, which sends that layer's blocks over UCX
while later layers compute; after the last layer the transfer is committed and the first token,
its logprob, the final hidden state and the probe's difficulty go back to the router.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from tandem.api.v1 import worker_pb2, worker_pb2_grpc
from tandem.kv.reservation import check_reservation
from tandem.kv.streamer import LayerStreamer, check_transfer_fits
from tandem.kv.transport import KVTransferError, KVTransferRefused
from tandem.kv.ucx_sender import UCXKVSender
from tandem.serving.engine_loop import EngineFailure, EngineLoop, StreamClosed
from tandem.serving.params import engine_params, logprob_message
from tandem.serving.request_ids import require_valid_request_id
from tandem.serving.worker_identity import WorkerIdentity
from tandem.telemetry.metrics import default_metrics
from tandem.telemetry.tracing import server_span, span

log = logging.getLogger(__name__)


class PrefillService(worker_pb2_grpc.PrefillWorkerServicer):
    """Serves PrefillWorker over one engine and one KV sender."""

    def __init__(self, loop: EngineLoop, sender: UCXKVSender, identity: WorkerIdentity,
                 probe=None) -> None:
        self.loop = loop
        self.engine = loop.engine
        self.sender = sender
        self.identity = identity
        self.probe = probe
        self.is_accepting = True
        # request id -> (reservation, prompt length); streamers appear when the last chunk runs.
        self._transfers: dict[str, tuple[worker_pb2.Reservation, int]] = {}
        self._streamers: dict[str, LayerStreamer] = {}
        self._aio_loop = asyncio.get_running_loop()
        self.engine.set_layer_hook(self._on_layer)

    async def Prefill(self, request, context):
        """Computes the prompt, streams its KV into the reservation, returns the first token."""
        await require_valid_request_id(context, request.request_id)
        with server_span("prefill_worker.prefill", context.invocation_metadata(),
                         request_id=request.request_id, num_prompt_tokens=len(request.prompt_token_ids)):
            if not self.is_accepting:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"prefill worker {self.identity.worker_id} is draining")
            request_id = request.request_id
            prompt = list(request.prompt_token_ids)
            has_transfer = request.HasField("reservation")
            try:
                params = engine_params(request.sampling, self.engine.tokenizer, max_tokens=1)
                if has_transfer:
                    check_reservation(request.reservation, self.sender.layout)
                    # Checked here, not in the engine's layer hook, where it would fail the whole batch.
                    check_transfer_fits(request.reservation, len(prompt), self.sender.layout.block_size)
                    self._transfers[request_id] = (request.reservation, len(prompt))
                queue = self.loop.open_stream(request_id)
                await self.loop.call(self.engine.add_request, request_id, prompt, params,
                                     prefill_only=True)
            except ValueError as exc:
                self._transfers.pop(request_id, None)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            try:
                output = await queue.get()
                if isinstance(output, StreamClosed):
                    await context.abort(grpc.StatusCode.CANCELLED, output.reason)
                if isinstance(output, EngineFailure):
                    await context.abort(grpc.StatusCode.INTERNAL, output.message)
                num_bytes, exposed = await self._finish_transfer(request_id) if has_transfer else (0, 0.0)
            except KVTransferRefused as exc:
                # The decode worker answered but no longer takes this KV (its reservation was
                # cancelled or its lease expired): the prefill worker itself is fine.
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"decode worker {request.reservation.worker_id or request.reservation.kv_address} "
                                    f"refused the KV of request {request_id!r}: {exc}")
            except KVTransferError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"KV transfer to {request.reservation.worker_id or request.reservation.kv_address} "
                                    f"failed: {exc}")
            finally:
                await self._cleanup(request_id)
            default_metrics().prefill_tokens.labels(**self._labels()).inc(
                len(prompt) - output.num_cached_prompt_tokens)
            return self._response(request, output, num_bytes, exposed)

    async def _finish_transfer(self, request_id: str) -> tuple[int, float]:
        streamer = self._streamers.get(request_id)
        if streamer is None:
            # Every block was already cached on the decode side: nothing to send but the commit.
            reservation, _ = self._transfers[request_id]
            await self.sender.commit(reservation)
            return 0, 0.0
        started = time.perf_counter()
        with span("kv_transfer", request_id=request_id):
            result = await streamer.finish()
        self._streamers.pop(request_id, None)
        default_metrics().kv_transfer_bytes.labels(**self._labels()).inc(result.num_bytes)
        default_metrics().kv_transfer_seconds.labels(**self._labels()).observe(
            time.perf_counter() - started)
        return result.num_bytes, result.exposed_seconds

    async def _cleanup(self, request_id: str) -> None:
        self.loop.close_stream(request_id)
        self._transfers.pop(request_id, None)
        unfinished = self._streamers.pop(request_id, None)
        if unfinished is not None:
            # Before the release: its posted sends may still read the blocks.
            await unfinished.abort("prefill ended before the transfer finished")
        await self.loop.call(self._release, request_id)

    def _release(self, request_id: str) -> int:
        try:
            return self.engine.release(request_id)
        except ValueError:
            return self.engine.abort(request_id)

    def _on_layer(self, layer: int, chunks: list[tuple[str, list[int], int, int]]) -> None:
        """Engine-thread hook: a layer has written the KV of these prompt chunks."""
        for request_id, block_ids, _start, end in chunks:
            transfer = self._transfers.get(request_id)
            if transfer is None:
                continue
            reservation, num_prompt_tokens = transfer
            # Chunked prefill grows the block table chunk by chunk; each report sends full blocks.
            source = block_ids[reservation.num_cached_blocks:len(reservation.block_ids)]
            streamer = self._streamers.get(request_id)
            if streamer is None:
                streamer = LayerStreamer(self.sender, reservation, source, loop=self._aio_loop,
                                         num_prompt_tokens=num_prompt_tokens)
                self._streamers[request_id] = streamer
            streamer.on_layer_done(layer, end, src_block_ids=source)

    def _response(self, request, output, num_bytes: int, exposed: float) -> worker_pb2.PrefillResponse:
        token_id = output.new_token_ids[0]
        response = worker_pb2.PrefillResponse(
            request_id=request.request_id, first_token_id=token_id,
            num_computed_tokens=len(request.prompt_token_ids) - output.num_cached_prompt_tokens,
            kv_bytes=num_bytes, kv_exposed_seconds=exposed, probe_difficulty=-1.0)
        if output.new_logprobs:
            first = output.new_logprobs[0]
            response.first_token_logprob.CopyFrom(
                logprob_message(self.engine.tokenizer, first.token_id, first.logprob, first.top))
        if output.hidden_state is not None:
            if request.return_hidden_state:
                response.hidden_state.extend(output.hidden_state.tolist())
            if self.probe is not None:
                response.probe_difficulty = float(self.probe.score_hidden(output.hidden_state.numpy()[None])[0])
        return response

    async def Cancel(self, request, context):
        """Drops a queued or running prefill and aborts its transfer."""
        await require_valid_request_id(context, request.request_id)
        streamer = self._streamers.pop(request.request_id, None)
        self._transfers.pop(request.request_id, None)
        if streamer is not None:
            await streamer.abort(request.reason or "cancelled")
        num_freed = await self.loop.call(self.engine.abort, request.request_id)
        self.loop.end_stream(request.request_id, f"cancelled: {request.reason or 'by the router'}")
        return worker_pb2.CancelResponse(found=num_freed > 0 or streamer is not None,
                                         num_freed_blocks=num_freed)

    async def GetLoad(self, request, context):
        """The engine's current load (in canary mode, after a canary sweep of the free blocks)."""
        if self.engine.config.debug_kv_canary:
            await self.loop.call(self.engine.sweep_kv_canary)
        return self.identity.load(self.loop.stats, worker_pb2.WORKER_ROLE_PREFILL, self.is_accepting,
                                  self.num_active)

    @property
    def num_active(self) -> int:
        """Prefills in flight."""
        return self.loop.stats.num_running + self.loop.stats.num_waiting

    def _labels(self) -> dict[str, str]:
        return {"worker": self.identity.worker_id, "model": self.identity.model}
