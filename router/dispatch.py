"""Runs one request across the workers: reserve, prefill, decode, and recover from lost workers.

A disaggregated request reserves KV blocks on a decode worker, has a prefill worker compute the
prompt and push its KV there, then decodes. A colocated request is prefilled by the decode worker
itself. A worker lost before the first token sends the request to another pair; a decode worker lost
after it resumes the request on another decode worker from the tokens already returned, so the
client never sees a token twice or out of order. Closing the event stream (client gone, deadline,
budget) cancels every worker's state at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from router.errors import ErrorCode, RouterError
from router.worker_pool import WorkerHandle, WorkerPool
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.policy.worker_choice import (NoWorkerAvailable, PrefixIndex, WorkerChoiceConfig,
                                         chained_block_hashes, choose_decode_worker,
                                         choose_prefill_worker, should_disaggregate)
from tandem.telemetry.tracing import inject_context, span

log = logging.getLogger(__name__)

# gRPC codes that mean "this worker is gone or refuses": try another pair.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN,
             grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}


@dataclass(slots=True)
class DispatchPlan:
    """Everything the workers need for one request, fixed before dispatch."""

    request_id: str
    model: str
    prompt_token_ids: list[int]
    sampling: inference_pb2.SamplingParams
    budget: worker_pb2.DecodeBudget
    num_samples: int = 1
    force_colocated: bool = False


@dataclass(slots=True)
class FirstToken:
    """The first token of sample 0, from the prefill worker (or the colocated decode worker)."""

    token_id: int
    logprob: inference_pb2.TokenLogprob | None
    hidden_state: list[float]
    probe_difficulty: float
    num_cached_prompt_tokens: int
    is_disaggregated: bool


@dataclass(slots=True)
class DispatchSettings:
    """Retry and timing settings of dispatch."""

    choice: WorkerChoiceConfig = field(default_factory=WorkerChoiceConfig)
    max_attempts: int = 3
    lease_seconds: float = 30.0
    rpc_timeout_s: float = 600.0
    block_size: int = 16


class Dispatcher:
    """Chooses workers and drives the worker RPCs of each request."""

    def __init__(self, pool: WorkerPool, settings: DispatchSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.prefix_index = PrefixIndex()
        # Which decode worker streams each request now, so that single samples can be cancelled.
        self._decoding_on: dict[str, WorkerHandle] = {}

    async def cancel_samples(self, plan: DispatchPlan, sample_indices: list[int]) -> None:
        """Cancels some samples of a request (the losers of a selection) and frees their blocks."""
        handle = self._decoding_on.get(plan.request_id)
        if handle is None or not sample_indices:
            return
        await self._cancel(handle, plan.request_id, "selection", sample_indices)

    async def run(self, plan: DispatchPlan, on_first_token=None) -> AsyncIterator[object]:
        """Yields FirstToken, then worker_pb2.DecodeChunk messages, in order, exactly once each.

        on_first_token(FirstToken) may return a new DecodeBudget (the router refines the budget
        from the prefill probe) before decoding starts.
        """
        emitted: list[int] = []
        attempts = 0
        while True:
            attempts += 1
            try:
                async for event in self._attempt(plan, emitted, on_first_token):
                    if isinstance(event, FirstToken):
                        emitted.append(event.token_id)
                    elif plan.num_samples == 1:
                        emitted.extend(event.token_ids)
                    yield event
                return
            except _WorkerLost as lost:
                can_resume = not emitted or plan.num_samples == 1
                if attempts >= self.settings.max_attempts or not can_resume:
                    raise RouterError(ErrorCode.UNAVAILABLE,
                                      f"request {plan.request_id} failed after {attempts} "
                                      f"attempt(s): {lost}") from None
                log.warning("request %s: %s; retrying (attempt %d)", plan.request_id, lost,
                            attempts + 1)

    async def _attempt(self, plan: DispatchPlan, emitted: list[int], on_first_token):
        hashes = chained_block_hashes(plan.prompt_token_ids, self.settings.block_size)
        decode = self._choose_decode(plan.model, hashes)
        if emitted:
            # Resume: the new decode worker prefills prompt + returned tokens and continues.
            resumed = _resumed_plan(plan, emitted)
            async for chunk in self._decode(decode, resumed, colocated=True, first_token_id=0):
                yield chunk
            return
        prefill, reason = self._choose_prefill(plan, hashes, decode)
        log.debug("request %s: decode %s, prefill %s (%s)", plan.request_id, decode.worker_id,
                  prefill.worker_id if prefill else "colocated", reason)
        self.prefix_index.record(decode.worker_id, hashes)
        decode.num_inflight_since_poll += 1
        if prefill is None:
            async for event in self._colocated(decode, plan, on_first_token):
                yield event
            return
        prefill.num_inflight_since_poll += 1
        async for event in self._disaggregated(prefill, decode, plan, on_first_token):
            yield event

    def _choose_decode(self, model: str, hashes: list[int]) -> WorkerHandle:
        handles = self.pool.healthy("decode", model)
        try:
            choice = choose_decode_worker([h.snapshot() for h in handles], hashes,
                                          self.prefix_index, self.settings.choice)
        except NoWorkerAvailable as exc:
            raise RouterError(ErrorCode.UNAVAILABLE, f"no decode worker for model {model!r}: {exc}")
        return next(h for h in handles if h.worker_id == choice.worker_id)

    def _choose_prefill(self, plan: DispatchPlan, hashes: list[int], decode: WorkerHandle):
        if plan.force_colocated:
            return None, "colocated by policy"
        handles = self.pool.healthy("prefill", plan.model)
        num_cached_blocks = self.prefix_index.match(hashes).get(decode.worker_id, 0)
        num_uncached = max(0, len(plan.prompt_token_ids) - num_cached_blocks * self.settings.block_size)
        is_split, reason = should_disaggregate(num_uncached, [h.snapshot() for h in handles],
                                               self.settings.choice)
        if not is_split:
            return None, reason
        choice = choose_prefill_worker([h.snapshot() for h in handles], num_uncached,
                                       self.settings.choice)
        return next(h for h in handles if h.worker_id == choice.worker_id), reason

    async def _colocated(self, decode: WorkerHandle, plan: DispatchPlan, on_first_token):
        is_first = True
        async for chunk in self._decode(decode, plan, colocated=True, first_token_id=0):
            if is_first and chunk.token_ids:
                is_first = False
                first = FirstToken(chunk.token_ids[0], chunk.logprobs[0] if chunk.logprobs else None,
                                   list(chunk.hidden_state), -1.0, chunk.num_cached_prompt_tokens,
                                   is_disaggregated=False)
                if on_first_token is not None:
                    on_first_token(first)
                yield first
                rest = worker_pb2.DecodeChunk()
                rest.CopyFrom(chunk)
                del rest.token_ids[0]
                if rest.logprobs:
                    del rest.logprobs[0]
                if rest.sections:
                    del rest.sections[0]
                if rest.token_ids or rest.finish_reason:
                    yield rest
                continue
            yield chunk

    async def _disaggregated(self, prefill: WorkerHandle, decode: WorkerHandle,
                             plan: DispatchPlan, on_first_token):
        reservation = await self._reserve(decode, plan)
        try:
            response = await self._prefill(prefill, plan, reservation)
        except BaseException:
            await self._cancel(decode, plan.request_id, "prefill-failed")
            raise
        first = FirstToken(response.first_token_id, response.first_token_logprob,
                           list(response.hidden_state), response.probe_difficulty,
                           reservation.num_cached_blocks * self.settings.block_size,
                           is_disaggregated=True)
        budget = on_first_token(first) if on_first_token is not None else None
        yield first
        if budget is not None:
            plan.budget.CopyFrom(budget)
        if _is_finished_after_first(plan):
            await self._cancel(decode, plan.request_id, "finished-at-first-token")
            return
        async for chunk in self._decode(decode, plan, colocated=False,
                                        first_token_id=response.first_token_id,
                                        reservation_token=reservation.token):
            yield chunk

    async def _reserve(self, decode: WorkerHandle, plan: DispatchPlan) -> worker_pb2.Reservation:
        request = worker_pb2.ReserveRequest(request_id=plan.request_id,
                                            prompt_token_ids=plan.prompt_token_ids,
                                            lease_seconds=self.settings.lease_seconds,
                                            num_samples=plan.num_samples)
        with span("router.reserve", worker=decode.worker_id):
            return await self._unary(decode, decode.stub.Reserve, request)

    async def _prefill(self, prefill: WorkerHandle, plan: DispatchPlan,
                       reservation: worker_pb2.Reservation) -> worker_pb2.PrefillResponse:
        request = worker_pb2.PrefillRequest(request_id=plan.request_id,
                                            prompt_token_ids=plan.prompt_token_ids,
                                            sampling=plan.sampling, reservation=reservation,
                                            return_hidden_state=True)
        with span("router.prefill", worker=prefill.worker_id):
            try:
                return await self._unary(prefill, prefill.stub.Prefill, request)
            except asyncio.CancelledError:
                await self._cancel(prefill, plan.request_id, "client-gone")
                raise

    async def _unary(self, handle: WorkerHandle, method, request):
        try:
            return await method(request, timeout=self.settings.rpc_timeout_s,
                                metadata=inject_context([]))
        except grpc.aio.AioRpcError as exc:
            raise self._classify(handle, exc) from None

    async def _decode(self, decode: WorkerHandle, plan: DispatchPlan, *, colocated: bool,
                      first_token_id: int, reservation_token: bytes = b""):
        request = worker_pb2.DecodeRequest(
            request_id=plan.request_id, reservation_token=reservation_token,
            first_token_id=first_token_id, prompt_token_ids=plan.prompt_token_ids,
            colocated=colocated, sampling=plan.sampling, budget=plan.budget)
        call = decode.stub.Decode(request, timeout=self.settings.rpc_timeout_s,
                                  metadata=inject_context([]))
        finished = 0
        self._decoding_on[plan.request_id] = decode
        try:
            with span("router.decode", worker=decode.worker_id, colocated=colocated):
                async for chunk in call:
                    if chunk.finish_reason:
                        finished += 1
                    yield chunk
        except grpc.aio.AioRpcError as exc:
            raise self._classify(decode, exc) from None
        finally:
            self._decoding_on.pop(plan.request_id, None)
            if finished < plan.num_samples:
                call.cancel()
                await self._cancel(decode, plan.request_id, "stream-closed")

    def _classify(self, handle: WorkerHandle, exc: grpc.aio.AioRpcError) -> Exception:
        code = exc.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return RouterError(ErrorCode.INVALID_ARGUMENT, exc.details())
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return _WorkerLost(f"{handle.worker_id} is full: {exc.details()}")
        if code in RETRYABLE:
            self.pool.mark_failed(handle, f"{code.name}: {exc.details()}")
            return _WorkerLost(f"{handle.role} worker {handle.worker_id} lost: {code.name}: "
                               f"{exc.details()}")
        return RouterError(ErrorCode.INTERNAL, f"{handle.role} worker {handle.worker_id}: "
                                               f"{code.name}: {exc.details()}")

    async def _cancel(self, handle: WorkerHandle, request_id: str, reason: str,
                      sample_indices: list[int] | None = None) -> None:
        request = worker_pb2.CancelRequest(request_id=request_id, reason=reason,
                                           sample_indices=sample_indices or [])
        try:
            await handle.stub.Cancel(request, timeout=2.0)
        except grpc.aio.AioRpcError as exc:
            log.debug("cancel of %s on %s failed: %s", request_id, handle.worker_id, exc.code())


class _WorkerLost(Exception):
    """A worker failed in a way another worker can recover from."""


def _is_finished_after_first(plan: DispatchPlan) -> bool:
    return plan.num_samples == 1 and plan.budget.max_tokens <= 1


def _resumed_plan(plan: DispatchPlan, emitted: list[int]) -> DispatchPlan:
    budget = worker_pb2.DecodeBudget()
    budget.CopyFrom(plan.budget)
    budget.max_tokens = max(1, plan.budget.max_tokens - len(emitted))
    return DispatchPlan(request_id=f"{plan.request_id}~{time.monotonic_ns()}", model=plan.model,
                        prompt_token_ids=plan.prompt_token_ids + emitted, sampling=plan.sampling,
                        budget=budget, num_samples=1, force_colocated=True)
