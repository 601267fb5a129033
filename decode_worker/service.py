"""The decode worker's gRPC service: reserve KV blocks, decode, cancel, report load.

Reserve allocates blocks (reusing cached prefix blocks) and registers a grant that lets one
prefill worker write them over UCX. Decode claims a completed grant (or prefills the prompt itself
when colocated) and streams every sample's tokens. Cancel, a closed stream, the deadline, the
total-token ceiling, or an expired lease free the request's blocks at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

import grpc

from decode_worker.samples import SampleGroup, SampleStopped
from tandem.api.v1 import inference_pb2, worker_pb2, worker_pb2_grpc
from tandem.engine.llm_engine import CapacityError
from tandem.engine.sequence import FinishReason, TokenSection
from tandem.kv.grants import GrantRefused, GrantState, GrantTable, KVGrant
from tandem.kv.reservation import make_reservation
from tandem.serving.engine_loop import EngineFailure, EngineLoop
from tandem.serving.params import engine_params, logprob_message
from tandem.serving.worker_identity import WorkerIdentity
from tandem.telemetry.tracing import start_server_span

log = logging.getLogger(__name__)

FINISH_REASONS = {
    FinishReason.STOP: inference_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: inference_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: inference_pb2.FINISH_REASON_CANCELLED,
}
SECTIONS = {TokenSection.THINKING: inference_pb2.TOKEN_SECTION_THINKING,
            TokenSection.ANSWER: inference_pb2.TOKEN_SECTION_ANSWER}
DEFAULT_LEASE_S = 30.0


class DecodeService(worker_pb2_grpc.DecodeWorkerServicer):
    """Serves DecodeWorker over one engine and one KV receiver."""

    def __init__(self, loop: EngineLoop, grants: GrantTable, kv_address: str,
                 identity: WorkerIdentity) -> None:
        self.loop = loop
        self.engine = loop.engine
        self.grants = grants
        self.kv_address = kv_address
        self.identity = identity
        self.is_accepting = True
        self._groups: dict[str, SampleGroup] = {}

    # Reserve ------------------------------------------------------------------------------
    async def Reserve(self, request, context):
        """Reserves blocks for a prompt under a lease and returns where to write them."""
        await self._require_accepting(context)
        prompt = list(request.prompt_token_ids)
        try:
            block_ids, num_cached = await self.loop.call(self.engine.reserve, request.request_id, prompt)
        except CapacityError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        lease_s = request.lease_seconds if request.lease_seconds > 0 else DEFAULT_LEASE_S
        grant = self.grants.register(request.request_id, block_ids, num_cached, time.time() + lease_s)
        return make_reservation(grant, self.kv_address, self.identity.wire_layout, self.identity.worker_id)

    def on_grant_released(self, grant: KVGrant) -> None:
        """GrantTable callback (any thread): an aborted, cancelled or expired grant frees its blocks."""
        self.loop.submit_soon(self.engine.release, grant.request_id)

    # Decode -------------------------------------------------------------------------------
    async def Decode(self, request, context):
        """Streams every sample's tokens until each finishes or the request is cancelled."""
        await self._require_accepting(context)
        group = SampleGroup(request.request_id, max(1, request.sampling.n or 1),
                            request.budget.max_total_tokens, request.budget.deadline)
        if group.request_id in self._groups:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"request {group.request_id!r} is already decoding here")
        self._groups[group.request_id] = group
        span = start_server_span("decode_worker.decode", context.invocation_metadata(),
                                 request_id=request.request_id, colocated=request.colocated)
        try:
            await self._start(request, group, context)
            async for chunk in self._stream(group, request):
                yield chunk
        finally:
            span.set_attribute("num_tokens", group.num_tokens)
            span.end()
            await self._stop_all(group)
            self._groups.pop(group.request_id, None)

    async def _start(self, request, group: SampleGroup, context) -> None:
        prompt = list(request.prompt_token_ids)
        for index in range(group.num_samples):
            self.loop.open_stream(group.engine_id(index), group.queue)
        try:
            if request.colocated:
                params = self._params(request, 0)
                await self.loop.call(self.engine.add_request, group.engine_id(0), prompt, params)
            else:
                await self._claim(request, context)
                group.count_tokens(1)  # the prefill worker's first token counts toward the ceiling
                params = self._params(request, 0)
                await self.loop.call(self.engine.add_prefilled_request, group.engine_id(0), prompt,
                                     request.first_token_id, params)
            for index in range(1, group.num_samples):
                # Later samples share the prompt's KV blocks through the prefix cache.
                await self.loop.call(self.engine.add_request, group.engine_id(index), prompt,
                                     self._params(request, index))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CapacityError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _claim(self, request, context) -> None:
        grant = self.grants.get(request.request_id)
        if grant is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"no reservation for request {request.request_id!r} (expired or never made)")
        if not hmac.compare_digest(grant.token, bytes(request.reservation_token)):
            # Checked before waiting, so a wrong token is refused at once and learns nothing.
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"reservation token of request {request.request_id!r} does not match")
        left = max(0.0, grant.lease_expires_at - time.time())
        try:
            state = await grant.wait(timeout=left)
        except TimeoutError:
            state = grant.state
        if state is not GrantState.COMPLETE:
            self.grants.cancel(request.request_id)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"KV for request {request.request_id!r} did not arrive: grant {state.value}")
        try:
            self.grants.claim(request.request_id, bytes(request.reservation_token))
        except GrantRefused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    def _params(self, request, sample_index: int):
        max_tokens = request.budget.max_tokens or 1
        return engine_params(request.sampling, self.engine.tokenizer, max_tokens=max_tokens,
                             budget=request.budget, sample_index=sample_index)

    async def _stream(self, group: SampleGroup, request):
        is_first = True
        while group.running:
            event = await self._next_event(group)
            if event is None:
                for chunk in await self._stop_running(group, inference_pb2.FINISH_REASON_DEADLINE,
                                                      "deadline passed"):
                    yield chunk
                return
            if isinstance(event, EngineFailure):
                raise RuntimeError(event.message)
            if isinstance(event, SampleStopped):
                yield worker_pb2.DecodeChunk(request_id=group.request_id, sample_index=event.sample_index,
                                             finish_reason=event.finish_reason, finish_detail=event.detail)
                continue
            chunk = self._chunk(group, event, is_first and request.colocated)
            is_first = False
            if chunk is None:
                continue
            if _truncate(chunk, group.tokens_left()):
                group.running.discard(chunk.sample_index)
            yield chunk
            if group.count_tokens(len(chunk.token_ids)) and group.running:
                for stopped in await self._stop_running(group, inference_pb2.FINISH_REASON_COST,
                                                        "request token ceiling (max_cost) reached"):
                    yield stopped

    async def _next_event(self, group: SampleGroup):
        if not group.backlog and group.queue.empty():
            left = group.seconds_left()
            try:
                group.backlog.append(await asyncio.wait_for(
                    group.queue.get(), timeout=None if left is None else max(0.0, left)))
            except TimeoutError:
                return None
        return group.next_batched()

    def _chunk(self, group: SampleGroup, output, with_prompt_info: bool):
        index = group.sample_index(output.request_id)
        if index not in group.running:
            return None
        chunk = worker_pb2.DecodeChunk(
            request_id=group.request_id, sample_index=index, token_ids=output.new_token_ids,
            sections=[SECTIONS[s] for s in output.new_sections])
        if output.new_logprobs:
            tokenizer = self.engine.tokenizer
            chunk.logprobs.extend(logprob_message(tokenizer, lp.token_id, lp.logprob, lp.top)
                                  for lp in output.new_logprobs)
        if with_prompt_info:
            chunk.num_cached_prompt_tokens = output.num_cached_prompt_tokens
            if output.hidden_state is not None:
                chunk.hidden_state.extend(output.hidden_state.tolist())
        if output.finished:
            group.running.discard(index)
            chunk.finish_reason = FINISH_REASONS.get(output.finish_reason,
                                                     inference_pb2.FINISH_REASON_STOP)
            chunk.finish_detail = output.finish_reason.value if output.finish_reason else ""
        return chunk

    async def _stop_running(self, group: SampleGroup, reason: int, detail: str) -> list:
        indices = sorted(group.running)
        for engine_id in group.engine_ids(indices):
            await self.loop.call(self.engine.abort, engine_id)
        group.running.clear()
        return [worker_pb2.DecodeChunk(request_id=group.request_id, sample_index=i,
                                       finish_reason=reason, finish_detail=detail) for i in indices]

    async def _stop_all(self, group: SampleGroup) -> None:
        for index in range(group.num_samples):
            engine_id = group.engine_id(index)
            self.loop.close_stream(engine_id)
            await self.loop.call(self.engine.abort, engine_id)

    # Cancel and load ----------------------------------------------------------------------
    async def Cancel(self, request, context):
        """Cancels samples, a decoding request, or an unclaimed reservation; frees blocks at once."""
        group = self._groups.get(request.request_id)
        if group is not None:
            indices = list(request.sample_indices) or list(range(group.num_samples))
            num_freed = 0
            for engine_id in group.engine_ids(group.cancel(indices, request.reason or "cancelled")):
                num_freed += await self.loop.call(self.engine.abort, engine_id)
            return worker_pb2.CancelResponse(found=True, num_freed_blocks=num_freed)
        # A reservation's blocks go back through on_grant_released, once no write is in flight.
        grant = self.grants.cancel(request.request_id)
        if grant is not None:
            return worker_pb2.CancelResponse(found=True, num_freed_blocks=len(grant.block_ids))
        num_freed = await self.loop.call(self.engine.abort, request.request_id)
        return worker_pb2.CancelResponse(found=num_freed > 0, num_freed_blocks=num_freed)

    async def GetLoad(self, request, context):
        """The engine's current load."""
        return self.identity.load(self.loop.stats, worker_pb2.WORKER_ROLE_DECODE, self.is_accepting)

    async def _require_accepting(self, context) -> None:
        if not self.is_accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"decode worker {self.identity.worker_id} is draining")

    @property
    def num_active(self) -> int:
        """Requests decoding or reserved here."""
        return len(self._groups) + len(self.grants)


def _truncate(chunk: worker_pb2.DecodeChunk, num_allowed: int | None) -> bool:
    """Cuts a chunk to the tokens the request-wide ceiling still allows; True if it cut."""
    if num_allowed is None or len(chunk.token_ids) <= num_allowed:
        return False
    del chunk.token_ids[num_allowed:]
    del chunk.logprobs[num_allowed:]
    del chunk.sections[num_allowed:]
    chunk.finish_reason = inference_pb2.FINISH_REASON_COST
    chunk.finish_detail = "request token ceiling (max_cost) reached"
    return True
