"""Runs one request across the workers: reserve, prefill, decode, and recover from lost workers.

A disaggregated request reserves KV blocks on a decode worker, has a prefill worker compute the
prompt and push its KV there, then decodes. A colocated request is prefilled by the decode worker
itself. Every attempt runs under a worker-side request id of its own (the client's id is only a
label), so two requests never share worker state. A worker that fails or refuses before the first
token is left out for the rest of the request and another pair is tried (max_attempts). A decode
worker lost after it migrates each unfinished sample to another decode worker, which goes on from
the tokens already relayed (migration_limit times per sample), so the client never sees a token
twice or out of order. Closing the event stream (client gone, deadline, budget, selection) cancels
every worker's state at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from router.decode_streams import DecodeStream, StreamEnded, StreamSet
from router.errors import ErrorCode, RouterError
from router.sample_progress import SampleProgress, resumed_request
from router.worker_calls import ReservationGone, WorkerCalls, WorkerLost
from router.worker_pool import WorkerHandle, WorkerPool
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.policy.probe_steps import ProbeStep
from tandem.policy.worker_choice import (NoWorkerAvailable, PrefixIndex, WorkerChoiceConfig,
                                         chained_block_hashes, choose_decode_worker,
                                         choose_prefill_worker, should_disaggregate)
from tandem.telemetry.metrics import default_metrics
from tandem.telemetry.tracing import span

log = logging.getLogger(__name__)


@dataclass(slots=True)
class DispatchPlan:
    """Everything the workers need for one request, fixed before dispatch."""

    # The client's request id: a label for logs, never sent to a worker.
    request_id: str
    model: str
    prompt_token_ids: list[int]
    sampling: inference_pb2.SamplingParams
    budget: worker_pb2.DecodeBudget
    num_samples: int = 1
    force_colocated: bool = False
    # Tokens per KV block on this model's workers (prefix hashes, cached-token counts).
    block_size: int = 16
    # The thinking budget by probe difficulty: a colocated request's decode worker applies it
    # after its own prefill (DecodeRequest.probe_budgets).
    probe_steps: list[ProbeStep] = field(default_factory=list)


@dataclass(slots=True)
class FirstToken:
    """The first token of sample 0, from the prefill worker (or the colocated decode worker)."""

    token_id: int
    logprob: inference_pb2.TokenLogprob | None
    # From the probe of the worker that prefilled the prompt; -1 when it has none.
    probe_difficulty: float
    num_cached_prompt_tokens: int
    is_disaggregated: bool


@dataclass(slots=True)
class DispatchSettings:
    """Retry, migration and timing settings of dispatch."""

    choice: WorkerChoiceConfig = field(default_factory=WorkerChoiceConfig)
    # Worker pairs tried before the first token.
    max_attempts: int = 3
    # Times each sample may move to another decode worker after its first token (0: never).
    migration_limit: int = 3
    lease_seconds: float = 30.0
    rpc_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.migration_limit < 0:
            raise ValueError(f"max_attempts must be >= 1 and migration_limit >= 0, got "
                             f"{self.max_attempts} and {self.migration_limit}")


class Dispatcher:
    """Chooses workers and drives the worker RPCs of each request."""

    def __init__(self, pool: WorkerPool, settings: DispatchSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.prefix_index = PrefixIndex()
        self.calls = WorkerCalls(pool, settings.rpc_timeout_s)

    async def run(self, plan: DispatchPlan, on_first_token=None) -> AsyncIterator[object]:
        """Yields FirstToken, then worker_pb2.DecodeChunk messages (client sample indices), in
        order, exactly once each, until every sample has finished.

        on_first_token(FirstToken) may return a new DecodeBudget (the router refines the budget
        from the prefill probe) before decoding starts.
        """
        progress = SampleProgress(plan.num_samples, plan.budget.max_total_tokens)
        excluded: set[str] = set()  # workers that failed or refused this request
        streams = StreamSet(self.calls.read)
        try:
            for event in await self._first_token(plan, excluded, streams, on_first_token):
                if isinstance(event, FirstToken):
                    progress.record_first_token(event.token_id)
                    yield event
                    continue
                for chunk in progress.record(event):
                    yield chunk
            while progress.unfinished():
                if not streams.active:
                    raise RouterError(ErrorCode.INTERNAL, f"request {plan.request_id}: samples "
                                      f"{progress.unfinished()} have no stream left")
                stream, event = await streams.next_event()
                if isinstance(event, worker_pb2.DecodeChunk):
                    for chunk in progress.record(stream.client_chunk(event)):
                        yield chunk
                elif isinstance(event, RouterError):
                    raise event
                elif isinstance(event, StreamEnded) and stream.is_done:
                    streams.active.remove(stream)
                else:
                    await self._migrate(plan, stream, event, progress, excluded, streams)
        finally:
            for stream in list(streams.active):
                await self.calls.close(streams, stream, "stream-closed")

    # Before the first token ---------------------------------------------------------------
    async def _first_token(self, plan: DispatchPlan, excluded: set[str], streams: StreamSet,
                           on_first_token) -> list[object]:
        attempt = 1
        while True:
            try:
                return await self._attempt(plan, excluded, streams, on_first_token)
            except WorkerLost as lost:
                if not isinstance(lost, ReservationGone):  # a new reservation may do
                    excluded.add(lost.worker_id)
                if attempt >= self.settings.max_attempts:
                    raise RouterError(ErrorCode.UNAVAILABLE, f"request {plan.request_id} failed "
                                      f"after {attempt} attempt(s): {lost}") from None
                attempt += 1
                log.warning("request %s: %s; retrying without it (attempt %d)", plan.request_id,
                            lost, attempt)

    async def _attempt(self, plan: DispatchPlan, excluded: set[str], streams: StreamSet,
                       on_first_token) -> list[object]:
        hashes = chained_block_hashes(plan.prompt_token_ids, plan.block_size)
        decode = self._choose_decode(plan.model, hashes, excluded)
        prefill, reason = self._choose_prefill(plan, hashes, decode, excluded)
        self._route_to(decode, hashes)
        worker_request_id = uuid.uuid4().hex
        log.debug("request %s (worker id %s): decode %s, prefill %s (%s)", plan.request_id,
                  worker_request_id, decode.worker_id, prefill.worker_id if prefill else "colocated",
                  reason)
        if prefill is None:
            return await self._colocated(decode, plan, worker_request_id, streams, on_first_token)
        prefill.num_inflight_since_poll += 1
        return await self._disaggregated(prefill, decode, plan, worker_request_id, streams,
                                         on_first_token)

    def _choose_decode(self, model: str, hashes: list[int], excluded: set[str]) -> WorkerHandle:
        handles = [h for h in self.pool.healthy("decode", model) if h.worker_id not in excluded]
        try:
            choice = choose_decode_worker([h.snapshot() for h in handles], hashes,
                                          self.prefix_index, self.settings.choice)
        except NoWorkerAvailable as exc:
            raise RouterError(ErrorCode.UNAVAILABLE, f"no decode worker for model {model!r} "
                              f"({len(excluded)} failed or refused this request): {exc}") from None
        return next(h for h in handles if h.worker_id == choice.worker_id)

    def _route_to(self, decode: WorkerHandle, hashes: list[int]) -> None:
        """Notes a decision: the worker will hold these blocks and has one more request coming."""
        self.prefix_index.record(decode.worker_id, hashes)
        decode.num_inflight_since_poll += 1

    def _choose_prefill(self, plan: DispatchPlan, hashes: list[int], decode: WorkerHandle,
                        excluded: set[str]):
        if plan.force_colocated:
            return None, "colocated by policy"
        handles = [h for h in self.pool.healthy("prefill", plan.model) if h.worker_id not in excluded]
        num_cached_blocks = self.prefix_index.match(hashes).get(decode.worker_id, 0)
        num_uncached = max(0, len(plan.prompt_token_ids) - num_cached_blocks * plan.block_size)
        is_split, reason = should_disaggregate(num_uncached, [h.snapshot() for h in handles],
                                               self.settings.choice)
        if not is_split:
            return None, reason
        choice = choose_prefill_worker([h.snapshot() for h in handles], num_uncached,
                                       self.settings.choice)
        return next(h for h in handles if h.worker_id == choice.worker_id), reason

    async def _colocated(self, decode: WorkerHandle, plan: DispatchPlan, worker_request_id: str,
                         streams: StreamSet, on_first_token) -> list[object]:
        request = worker_pb2.DecodeRequest(
            request_id=worker_request_id, prompt_token_ids=plan.prompt_token_ids, colocated=True,
            sampling=plan.sampling, budget=plan.budget,
            probe_budgets=[worker_pb2.ProbeBudget(min_probe_difficulty=step.min_probe_difficulty,
                                                  max_thinking_tokens=step.thinking_budget)
                           for step in plan.probe_steps])
        stream = self.calls.open_decode(decode, request, list(range(plan.num_samples)))
        # Chunks of other samples that come before sample 0's first token wait for it, so that a
        # retry after a failure here repeats nothing the client has seen.
        held: list[worker_pb2.DecodeChunk] = []
        try:
            while True:
                chunk = await self.calls.read(stream)
                if chunk is None:
                    raise WorkerLost(decode.worker_id, "the stream ended before the first token")
                chunk = stream.client_chunk(chunk)
                if chunk.sample_index == 0:
                    break
                held.append(chunk)
        except BaseException:
            await self.calls.close(streams, stream, "first-token-failed")
            raise
        streams.start(stream)
        if not chunk.token_ids:
            return [chunk, *held]
        probe = chunk.probe_difficulty if chunk.HasField("probe_difficulty") else -1.0
        first = FirstToken(chunk.token_ids[0], chunk.logprobs[0] if chunk.logprobs else None,
                           probe, chunk.num_cached_prompt_tokens, is_disaggregated=False)
        # The worker applied the same steps to the same probe: the budget follows what it did.
        budget = on_first_token(first) if on_first_token is not None else None
        if budget is not None:
            plan.budget.CopyFrom(budget)
        del chunk.token_ids[0]
        if chunk.logprobs:
            del chunk.logprobs[0]
        if chunk.sections:
            del chunk.sections[0]
        rest = [chunk] if chunk.token_ids or chunk.finish_reason else []
        return [first, *rest, *held]

    async def _disaggregated(self, prefill: WorkerHandle, decode: WorkerHandle, plan: DispatchPlan,
                             worker_request_id: str, streams: StreamSet,
                             on_first_token) -> list[object]:
        reservation = await self._reserve(decode, plan, worker_request_id)
        try:
            response = await self._prefill(prefill, plan, worker_request_id, reservation)
        except BaseException:
            await self.calls.cancel(decode, worker_request_id, "prefill-failed")
            raise
        first = FirstToken(response.first_token_id, response.first_token_logprob,
                           response.probe_difficulty,
                           reservation.num_cached_blocks * plan.block_size,
                           is_disaggregated=True)
        budget = on_first_token(first) if on_first_token is not None else None
        if budget is not None:
            plan.budget.CopyFrom(budget)
        # Decode runs even for one token: the decode worker says how the sample ended (STOP or
        # LENGTH) and takes over the reserved blocks.
        request = worker_pb2.DecodeRequest(
            request_id=worker_request_id, reservation_token=reservation.token,
            first_token_id=response.first_token_id, prompt_token_ids=plan.prompt_token_ids,
            colocated=False, sampling=plan.sampling, budget=plan.budget)
        streams.start(self.calls.open_decode(decode, request, list(range(plan.num_samples))))
        return [first]

    async def _reserve(self, decode: WorkerHandle, plan: DispatchPlan,
                       worker_request_id: str) -> worker_pb2.Reservation:
        request = worker_pb2.ReserveRequest(request_id=worker_request_id,
                                            prompt_token_ids=plan.prompt_token_ids,
                                            lease_seconds=self.settings.lease_seconds,
                                            num_samples=plan.num_samples)
        with span("router.reserve", worker=decode.worker_id):
            return await self.calls.unary(decode, decode.stub.Reserve, request)

    async def _prefill(self, prefill: WorkerHandle, plan: DispatchPlan, worker_request_id: str,
                       reservation: worker_pb2.Reservation) -> worker_pb2.PrefillResponse:
        request = worker_pb2.PrefillRequest(request_id=worker_request_id,
                                            prompt_token_ids=plan.prompt_token_ids,
                                            sampling=plan.sampling, reservation=reservation)
        with span("router.prefill", worker=prefill.worker_id):
            try:
                return await self.calls.unary(prefill, prefill.stub.Prefill, request)
            except asyncio.CancelledError:
                await self.calls.cancel(prefill, worker_request_id, "client-gone")
                raise

    # After the first token ----------------------------------------------------------------
    async def _migrate(self, plan: DispatchPlan, stream: DecodeStream, event: object,
                       progress: SampleProgress, excluded: set[str], streams: StreamSet) -> None:
        """Moves each unfinished sample of a lost stream to another decode worker."""
        lost = event if isinstance(event, WorkerLost) else WorkerLost(
            stream.handle.worker_id, "the stream ended before every sample finished")
        await streams.stop(stream)
        excluded.add(lost.worker_id)
        try:
            for index in [i for i in stream.sample_indices if i not in progress.finished]:
                self._resume(plan, index, lost, progress, excluded, streams)
        finally:
            # Once the samples moved on: a worker that hangs rather than died costs them no time.
            await self.calls.cancel(stream.handle, stream.worker_request_id, "worker-lost")

    def _resume(self, plan: DispatchPlan, index: int, lost: WorkerLost, progress: SampleProgress,
                excluded: set[str], streams: StreamSet) -> None:
        """Starts sample `index` on another decode worker, after the tokens already relayed."""
        limit = self.settings.migration_limit
        if progress.num_migrations[index] >= limit:
            raise RouterError(ErrorCode.UNAVAILABLE, f"request {plan.request_id}: {lost}; sample "
                              f"{index} cannot move to another worker (migration limit {limit})")
        progress.num_migrations[index] += 1
        hashes = chained_block_hashes(plan.prompt_token_ids + progress.token_ids[index],
                                      plan.block_size)
        decode = self._choose_decode(plan.model, hashes, excluded)
        self._route_to(decode, hashes)
        request = resumed_request(uuid.uuid4().hex, plan.prompt_token_ids, plan.sampling,
                                  plan.budget, progress, index)
        streams.start(self.calls.open_decode(decode, request, [index]))
        default_metrics().migrations.labels(model=plan.model).inc()
        log.warning("request %s: %s; sample %d resumes on %s after %d tokens (migration %d of at "
                    "most %d)", plan.request_id, lost, index, decode.worker_id,
                    len(progress.token_ids[index]), progress.num_migrations[index], limit)
