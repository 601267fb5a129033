"""The decode worker's gRPC service: reserve KV blocks, decode, cancel, report load.

Reserve allocates blocks (reusing cached prefix blocks) and registers a grant that lets one
prefill worker write them over UCX. Decode claims a completed grant (or prefills the prompt itself
when colocated) and streams every sample's tokens. Cancel, a closed stream, the deadline, the
total-token ceiling, or an expired lease free the request's blocks at once.

Every RPC checks its request id before it touches any state. Blocks have one owner at a time: a
reservation's blocks belong to its grant (freed through the grant table, once no write is in
flight) until a Decode presenting the grant's token claims them; a Decode frees only what it
claimed or added to the engine itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time

import grpc

from decode_worker.chunks import COST_DETAIL, DecodeFailed, output_chunk, truncate
from decode_worker.prompt_samples import prefill_here, start_samples
from decode_worker.samples import SampleGroup, SampleStopped
from tandem.api.v1 import inference_pb2, worker_pb2, worker_pb2_grpc
from tandem.engine.llm_engine import CapacityError
from tandem.kv.grants import GrantRefused, GrantState, GrantTable, KVGrant
from tandem.kv.reservation import checked_lease_seconds, make_reservation
from tandem.serving.engine_loop import EngineFailure, EngineLoop
from tandem.serving.params import engine_params
from tandem.serving.request_ids import require_valid_request_id
from tandem.serving.worker_identity import WorkerIdentity
from tandem.telemetry.metrics import default_metrics
from tandem.telemetry.tracing import start_server_span

log = logging.getLogger(__name__)


class DecodeService(worker_pb2_grpc.DecodeWorkerServicer):
    """Serves DecodeWorker over one engine and one KV receiver."""

    def __init__(self, loop: EngineLoop, grants: GrantTable, kv_address: str,
                 identity: WorkerIdentity, probe=None) -> None:
        self.loop = loop
        self.engine = loop.engine
        self.grants = grants
        self.kv_address = kv_address
        self.identity = identity
        # Scores the prompts this worker prefills itself (colocated); None without --probe.
        self.probe = probe
        self.is_accepting = True
        self._groups: dict[str, SampleGroup] = {}
        self._generated_tokens = default_metrics().generated_tokens.labels(
            worker=identity.worker_id, model=identity.model)

    # Reserve ------------------------------------------------------------------------------
    async def Reserve(self, request, context):
        """Reserves blocks for a prompt under a lease and returns where to write them."""
        await require_valid_request_id(context, request.request_id)
        await self._require_accepting(context)
        try:
            lease_s = checked_lease_seconds(request.lease_seconds)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            # If the caller is gone by the time the blocks are reserved, the grant is ended again.
            grant = await self.loop.call(self._reserve_on_engine, request.request_id,
                                         list(request.prompt_token_ids), time.time() + lease_s,
                                         undo=lambda made: self.grants.cancel(made.request_id))
        except CapacityError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            log.exception("reserve of request %r failed", request.request_id)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"reserve of request {request.request_id!r} failed: {exc}")
        try:
            return make_reservation(grant, self.kv_address, self.identity.wire_layout,
                                    self.identity.worker_id)
        except Exception as exc:
            log.exception("reservation of request %r cannot be described", request.request_id)
            self.grants.cancel(grant.request_id)  # its blocks go back with the grant
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"reserve of request {request.request_id!r} failed: {exc}")

    def _reserve_on_engine(self, request_id: str, prompt: list[int], lease_expires_at: float) -> KVGrant:
        """Engine thread: reserves blocks and registers their grant, or leaves nothing reserved.

        Both happen in one engine command, so no Cancel can run between them.
        """
        block_ids, num_cached = self.engine.reserve(request_id, prompt)
        try:
            return self.grants.register(request_id, block_ids, num_cached, lease_expires_at)
        except BaseException:
            self.engine.release(request_id)
            raise

    def on_grant_released(self, grant: KVGrant) -> None:
        """GrantTable callback (any thread): an aborted, cancelled or expired grant frees its blocks."""
        self.loop.submit_soon(self._release_grant_blocks, grant.request_id)

    def _release_grant_blocks(self, request_id: str) -> None:
        """Engine thread: frees an ended grant's blocks; a failure is logged and counted."""
        try:
            self.engine.release(request_id)
        except Exception:
            log.warning("could not free the blocks of ended grant %r: they stay held", request_id,
                        exc_info=True)
            default_metrics().dropped_errors.labels(component="decode_worker",
                                                    kind="grant_release_failed").inc()

    # Decode -------------------------------------------------------------------------------
    async def Decode(self, request, context):
        """Streams every sample's tokens until each finishes or the request is cancelled."""
        # A coroutine that writes, not an async generator that yields: grpc.aio cancels a handler
        # whose call ended while it awaits a send, and would leave a generator suspended at its
        # yield, its cleanup never run. aclosing runs it however the call ends.
        async with contextlib.aclosing(self._decode(request, context)) as chunks:
            async for chunk in chunks:
                await context.write(chunk)

    async def _decode(self, request, context):
        await require_valid_request_id(context, request.request_id)
        await self._require_accepting(context)
        try:
            group = SampleGroup(request.request_id, request.sampling.n or 1,
                                request.budget.max_total_tokens, request.budget.deadline)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if group.request_id in self._groups:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"request {group.request_id!r} is already decoding here")
        if request.colocated and self.grants.get(group.request_id) is not None:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"request {group.request_id!r} holds a reservation here; only a "
                                "Decode with its token may take it")
        self._groups[group.request_id] = group
        span = start_server_span("decode_worker.decode", context.invocation_metadata(),
                                 request_id=request.request_id, colocated=request.colocated)
        try:
            await self._start(request, group, context)
            async for chunk in self._stream(group, request):
                yield chunk
        except DecodeFailed as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        finally:
            # No await here: the call may be cancelled at any await, and the cleanup must finish.
            self._stop_all(group)
            self._groups.pop(group.request_id, None)
            span.set_attribute("num_tokens", group.num_tokens)
            span.end()

    async def _start(self, request, group: SampleGroup, context) -> None:
        prompt = list(request.prompt_token_ids)
        try:
            if request.output_token_ids:
                if not request.colocated or group.num_samples > 1:
                    raise ValueError("output_token_ids (a migrated sample) needs colocated and n <= 1")
                await self._add_sample(group, 0, prompt, self._params(request, request.budget, 0),
                                       output_token_ids=list(request.output_token_ids))
                return
            if request.colocated:
                prefilled = await prefill_here(self.loop, self.probe, group, request, prompt,
                                               self._params(request, request.budget, 0))
                if prefilled is None:
                    return  # cancelled or past the deadline: the stream ends the samples
                first_token_id, is_sample0_going_on, budget = prefilled
            else:
                await self._claim(request, context)
                # The claimed reservation's blocks are this Decode's now.
                group.owned.add(0)
                self.loop.open_stream(group.engine_id(0), group.queue)
                group.count_tokens(1)  # the prefill worker's first token counts toward the ceiling
                first_token_id, is_sample0_going_on, budget = request.first_token_id, True, request.budget
            await self._start_samples(group, request, prompt, first_token_id, budget,
                                      is_sample0_going_on)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CapacityError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _start_samples(self, group: SampleGroup, request, prompt: list[int],
                             first_token_id: int, budget, is_sample0_going_on: bool) -> None:
        """Starts sample 0 from its first token and forks the other running samples off its
        prompt, all in one engine command; from then on this Decode owns (and frees) them."""
        indices = [0] + [i for i in range(1, group.num_samples) if i in group.running]
        for index in indices[1:]:
            self.loop.open_stream(group.engine_id(index), group.queue)
        group.owned.update(indices)
        await self.loop.call(start_samples, self.engine, {i: group.engine_id(i) for i in indices},
                             prompt, first_token_id,
                             {i: self._params(request, budget, i) for i in indices},
                             is_sample0_going_on)

    async def _add_sample(self, group: SampleGroup, index: int, prompt: list[int], params,
                          output_token_ids: list[int] = ()) -> None:
        """Adds one sample to the engine; from then on this Decode owns (and frees) it."""
        engine_id = group.engine_id(index)
        self.loop.open_stream(engine_id, group.queue)
        await self.loop.call(self.engine.add_request, engine_id, prompt, params,
                             output_token_ids=output_token_ids,
                             undo=lambda _: self.engine.abort(engine_id))
        group.owned.add(index)

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
        except asyncio.CancelledError:
            # The holder of the token is gone: nobody will claim these blocks.
            self.grants.cancel(request.request_id)
            raise
        if state is not GrantState.COMPLETE:
            self.grants.cancel(request.request_id)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"KV for request {request.request_id!r} did not arrive: grant {state.value}")
        try:
            self.grants.claim(request.request_id, bytes(request.reservation_token))
        except GrantRefused as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))

    def _params(self, request, budget: worker_pb2.DecodeBudget, sample_index: int):
        return engine_params(request.sampling, self.engine.tokenizer,
                             max_tokens=budget.max_tokens or 1, budget=budget,
                             sample_index=sample_index)

    async def _stream(self, group: SampleGroup, request):
        is_first = True
        while group.running:
            event = await group.next_event()
            if event is None:
                for chunk in await self._stop_running(group, inference_pb2.FINISH_REASON_DEADLINE,
                                                      "deadline passed"):
                    yield chunk
                return
            if isinstance(event, EngineFailure):
                raise DecodeFailed(event.message)
            if isinstance(event, SampleStopped):
                yield worker_pb2.DecodeChunk(request_id=group.request_id, sample_index=event.sample_index,
                                             finish_reason=event.finish_reason, finish_detail=event.detail)
                continue
            chunk = output_chunk(group, event, self.engine.tokenizer,
                                 with_prompt_info=is_first and request.colocated,
                                 with_hidden_state=request.return_hidden_state)
            is_first = False
            if chunk is None:
                continue
            if truncate(chunk, group.tokens_left()):
                group.running.discard(chunk.sample_index)
            # Counted before the chunk leaves, so a client that has it can already read the count.
            self._generated_tokens.inc(len(chunk.token_ids))
            yield chunk
            if group.count_tokens(len(chunk.token_ids)) and group.running:
                for stopped in await self._stop_running(group, inference_pb2.FINISH_REASON_COST,
                                                        COST_DETAIL):
                    yield stopped

    async def _stop_running(self, group: SampleGroup, reason: int, detail: str) -> list:
        indices = sorted(group.running)
        for engine_id in group.engine_ids(group.owned.intersection(indices)):
            await self.loop.call(self.engine.abort, engine_id)
        group.running.clear()
        return [worker_pb2.DecodeChunk(request_id=group.request_id, sample_index=i,
                                       finish_reason=reason, finish_detail=detail) for i in indices]

    def _stop_all(self, group: SampleGroup) -> None:
        """Closes every sample's stream and frees what this Decode owns (and nothing else).

        The frees run on the engine thread after any command this Decode queued before, so a
        sample still being added when the call ends is freed too.
        """
        for index in range(group.num_samples):
            self.loop.close_stream(group.engine_id(index))
        for engine_id in group.engine_ids(group.owned):
            self.loop.submit_soon(self.engine.abort, engine_id)

    # Cancel and load ----------------------------------------------------------------------
    async def Cancel(self, request, context):
        """Cancels samples, a decoding request, or an unclaimed reservation; frees blocks at once."""
        await require_valid_request_id(context, request.request_id)
        group = self._groups.get(request.request_id)
        num_freed = 0
        if group is not None:
            indices = list(request.sample_indices) or list(range(group.num_samples))
            stopped = group.cancel(indices, request.reason or "cancelled")
            for engine_id in group.engine_ids(group.owned.intersection(stopped)):
                num_freed += await self.loop.call(self.engine.abort, engine_id)
            if 0 not in stopped or 0 in group.owned:
                return worker_pb2.CancelResponse(found=True, num_freed_blocks=num_freed)
        # A reservation (or a Decode still waiting for its KV): its blocks go back through
        # on_grant_released, once no write is in flight.
        grant = self.grants.cancel(request.request_id)
        if grant is not None:
            num_freed += len(grant.block_ids)
        return worker_pb2.CancelResponse(found=group is not None or grant is not None,
                                         num_freed_blocks=num_freed)

    async def GetLoad(self, request, context):
        """The engine's current load (in canary mode, after a canary sweep of the free blocks)."""
        if self.engine.config.debug_kv_canary:
            await self.loop.call(self.engine.sweep_kv_canary)
        return self.identity.load(self.loop.stats, worker_pb2.WORKER_ROLE_DECODE, self.is_accepting,
                                  self.num_active)

    async def _require_accepting(self, context) -> None:
        if not self.is_accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"decode worker {self.identity.worker_id} is draining")

    @property
    def num_active(self) -> int:
        """Requests decoding or reserved here."""
        return len(self._groups) + len(self.grants)
