"""The router's GenerationService: plan, admit, route, relay, account.

One request: validate and tokenize it (request_plan), estimate its difficulty and apply the
routing policy (routing_brain), dispatch it to a worker pair (dispatch), turn worker tokens into
text (sample_text), reduce parallel samples (selection), and report usage. Closing the stream
(client gone) cancels the workers through dispatch. Tenant quotas and outcome counts wrap this
service (router.admission.AdmittedService).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping

from router.auth import Tenant
from router.dispatch import Dispatcher, DispatchPlan, FirstToken
from router.errors import ErrorCode, RouterError
from router.request_plan import ModelEntry, RequestPlan, plan_request_off_loop
from router.routing_brain import RoutingBrain, RoutingOutcome, unknown_model
from router.sample_text import ANSWER, SampleText, TextPiece
from router.selection import Selection
from router.tenant_limits import within_tenant_limits
from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.telemetry.metrics import default_metrics

log = logging.getLogger(__name__)


class RouterCore:
    """Implements router.service.GenerationService over the worker pool."""

    def __init__(self, models: Mapping[str, ModelEntry], dispatcher: Dispatcher,
                 brain: RoutingBrain) -> None:
        # Served name -> entry; a live view (router.model_catalog.ModelCatalog) in the router.
        self.models = models
        self.dispatcher = dispatcher
        self.brain = brain

    def list_models(self) -> list[inference_pb2.ModelInfo]:
        """The models this router serves."""
        return [inference_pb2.ModelInfo(
            id=m.name, max_context=m.max_context,
            price_per_1k_prompt_tokens=m.price_per_1k_prompt_tokens,
            price_per_1k_completion_tokens=m.price_per_1k_completion_tokens,
            supports_thinking=m.supports_thinking) for m in self.models.values()]

    async def generate(self, request: inference_pb2.GenerateRequest, tenant: Tenant, *,
                       trace_context=None, on_planned=None,
                       ) -> AsyncIterator[inference_pb2.GenerateResponse]:
        """Streams one request's responses; the last carries usage (on_planned: see
        router.service.GenerationService)."""
        arrived, arrived_at = time.monotonic(), time.time()
        request_id = request.request_id or uuid.uuid4().hex
        models = dict(self.models)  # one view of the served tiers for the whole request
        if not self.brain.is_auto(request.model) and request.model not in models:
            self._model(request.model, tenant, models)  # UNAVAILABLE for a tier between workers
        outcome = await self.brain.before_prefill(request, tenant, models)
        model = self._model(outcome.model, tenant, models)
        request, defaults = within_tenant_limits(request, outcome.defaults, tenant.policy, tenant.name)
        plan = await plan_request_off_loop(request, model, defaults, arrived_at)
        if on_planned is not None:
            on_planned(planned_tokens(plan))
        relay = _Relay(request_id, model, plan, outcome, arrived)
        async for response in self._relay(relay):
            yield response

    def _model(self, name: str, tenant: Tenant, models: dict[str, ModelEntry]) -> ModelEntry:
        model = models.get(name)
        if model is None and name in getattr(self.models, "configured", ()):
            raise RouterError(ErrorCode.UNAVAILABLE, f"model {name!r} has no worker now")
        if model is None:
            raise unknown_model(name, models)
        if not tenant.policy.allows_model(name):
            raise RouterError(ErrorCode.PERMISSION_DENIED,
                              f"tenant {tenant.name!r} may not use model {name!r}", param="model")
        return model

    async def _relay(self, relay: _Relay):
        dispatch_plan = DispatchPlan(request_id=relay.request_id, model=relay.model.name,
                                     prompt_token_ids=relay.plan.prompt_token_ids,
                                     sampling=relay.plan.sampling, budget=relay.plan.budget,
                                     num_samples=relay.plan.num_samples,
                                     block_size=relay.model.block_size,
                                     probe_steps=relay.outcome.probe_steps,
                                     force_colocated=relay.outcome.force_colocated)
        events = self.dispatcher.run(dispatch_plan, on_first_token=relay.on_first_token(self.brain))
        try:
            async with asyncio.timeout(_seconds_left(relay.plan.deadline)):
                async for event in events:
                    for response in relay.handle(event):
                        yield response
                    if relay.selection_decided_with_samples_left():
                        break  # closing the events cancels the samples still running
        except TimeoutError:
            if relay.first_token_at is None:
                raise RouterError(ErrorCode.DEADLINE_EXCEEDED,
                                  "deadline passed before the first token") from None
            for response in relay.finish_all(inference_pb2.FINISH_REASON_DEADLINE, "deadline passed"):
                yield response
        finally:
            await events.aclose()
        for response in relay.closing():
            yield response


class _Relay:
    """Per-request state between worker events and client responses."""

    def __init__(self, request_id: str, model: ModelEntry, plan: RequestPlan,
                 outcome: RoutingOutcome, arrived: float) -> None:
        self.request_id, self.model, self.plan, self.outcome = request_id, model, plan, outcome
        self.arrived = arrived
        self.first_token_at: float | None = None
        # Sample index -> when its latest tokens arrived (inter-token latency is per sample).
        self.last_token_at: dict[int, float] = {}
        self.num_cached = 0
        self.probe_difficulty = -1.0
        self.is_disaggregated = False
        stop = list(plan.sampling.stop)
        self.samples = [SampleText(model.tokenizer, plan.prompt_token_ids, stop)
                        for _ in range(plan.num_samples)]
        self.finish: dict[int, tuple[int, str]] = {}
        self.selection = Selection(plan.sampling.selection, plan.num_samples,
                                   plan.sampling.selection_m)
        self.held: dict[int, list[inference_pb2.GenerateResponse]] = {}
        metrics = default_metrics()
        self._ttft = metrics.ttft_seconds.labels(worker="router", model=model.name)
        self._itl = metrics.itl_seconds.labels(worker="router", model=model.name)

    def on_first_token(self, brain: RoutingBrain):
        """The callback dispatch runs after prefill: records the probe, refines the budget."""
        def callback(first: FirstToken) -> worker_pb2.DecodeBudget | None:
            self.probe_difficulty = first.probe_difficulty
            self.num_cached = first.num_cached_prompt_tokens
            self.is_disaggregated = first.is_disaggregated
            return brain.after_prefill(self.outcome, first, self.plan.budget)
        return callback

    def handle(self, event) -> list[inference_pb2.GenerateResponse]:
        """Turns one dispatch event into client responses (held back under a selection rule)."""
        if isinstance(event, FirstToken):
            self._mark_token_times(0)
            chunk = worker_pb2.DecodeChunk(
                sample_index=0, token_ids=[event.token_id],
                sections=[inference_pb2.TOKEN_SECTION_THINKING if self.plan.budget.starts_in_thinking
                          else ANSWER],
                logprobs=[event.logprob] if event.logprob is not None and self.plan.sampling.logprobs
                else [])
            responses = self._chunk_responses(chunk)
            responses[0].routing.CopyFrom(self._routing())
            return self._hold_or_pass(0, responses)
        self._mark_token_times(event.sample_index, len(event.token_ids))
        return self._hold_or_pass(event.sample_index, self._chunk_responses(event))

    def _chunk_responses(self, chunk: worker_pb2.DecodeChunk) -> list[inference_pb2.GenerateResponse]:
        sample = self.samples[chunk.sample_index]
        if chunk.sample_index in self.finish:
            return []
        logprobs = list(chunk.logprobs) if self.plan.sampling.logprobs else []
        pieces = sample.add(list(chunk.token_ids), list(chunk.sections), logprobs)
        finish = chunk.finish_reason
        detail = chunk.finish_detail
        if sample.is_stopped:
            finish, detail = inference_pb2.FINISH_REASON_STOP, "stop string"
        responses = [self._response(chunk.sample_index, piece) for piece in pieces]
        if finish:
            responses += self._finish_sample(chunk.sample_index, finish, detail)
        if not responses:
            responses = [inference_pb2.GenerateResponse(request_id=self.request_id,
                                                        sample_index=chunk.sample_index)]
        return responses

    def _finish_sample(self, index: int, reason: int, detail: str) -> list[inference_pb2.GenerateResponse]:
        tail = self.samples[index].finish() or TextPiece(section=ANSWER)
        response = self._response(index, tail)
        response.finish_reason, response.finish_detail = reason, detail
        self.finish[index] = (reason, detail)
        if not self.selection.streams_every_sample:
            self.selection.add_finished(index, self.samples[index].answer_text,
                                        is_stopped_on_own=reason == inference_pb2.FINISH_REASON_STOP)
        return [response]

    def _response(self, index: int, piece: TextPiece) -> inference_pb2.GenerateResponse:
        return inference_pb2.GenerateResponse(
            request_id=self.request_id, sample_index=index, text=piece.text,
            token_ids=piece.token_ids, logprobs=piece.logprobs, section=piece.section)

    def _hold_or_pass(self, index: int, responses: list) -> list[inference_pb2.GenerateResponse]:
        if self.selection.streams_every_sample:
            return responses
        self.held.setdefault(index, []).extend(responses)
        return []

    def selection_decided_with_samples_left(self) -> bool:
        """True when a selection rule has its winner while other samples still run."""
        return (not self.selection.streams_every_sample and self.selection.is_decided
                and len(self.finish) < self.plan.num_samples)

    def losers(self) -> list[int]:
        """Samples to cancel once the selection is decided."""
        return [i for i in range(self.plan.num_samples) if i not in self.finish]

    def finish_all(self, reason: int, detail: str) -> list[inference_pb2.GenerateResponse]:
        """Ends every unfinished sample (deadline)."""
        responses = []
        for index in range(self.plan.num_samples):
            if index not in self.finish:
                responses += self._hold_or_pass(index, self._finish_sample(index, reason, detail))
        return responses

    def closing(self) -> list[inference_pb2.GenerateResponse]:
        """Releases the selected sample (under a rule) and the final usage message."""
        responses = []
        if not self.selection.streams_every_sample and self.selection.finished:
            for response in self.held.get(self.selection.winner(), []):
                response.sample_index = 0
                responses.append(response)
            if responses:
                responses[0].routing.CopyFrom(self._routing())
        for index in self.losers():
            self.finish[index] = (inference_pb2.FINISH_REASON_CANCELLED, "not selected")
        usage = inference_pb2.GenerateResponse(request_id=self.request_id, usage=self._usage())
        return responses + [usage]

    def _routing(self) -> inference_pb2.RoutingInfo:
        return inference_pb2.RoutingInfo(
            model=self.model.name, difficulty=self.outcome.difficulty,
            probe_difficulty=self.probe_difficulty, estimator=self.outcome.estimator,
            disaggregated=self.is_disaggregated, reason=self.outcome.reason)

    def _usage(self) -> inference_pb2.Usage:
        completion = sum(s.num_tokens for s in self.samples)
        thinking = sum(s.num_thinking_tokens for s in self.samples)
        num_prompt = len(self.plan.prompt_token_ids)
        return inference_pb2.Usage(
            prompt_tokens=num_prompt, cached_prompt_tokens=self.num_cached,
            completion_tokens=completion, thinking_tokens=thinking,
            answer_tokens=completion - thinking, num_samples=self.plan.num_samples,
            cost=self.model.prompt_cost(num_prompt) + self.model.completion_cost(completion),
            routing=self._routing())

    def _mark_token_times(self, sample_index: int, num_tokens: int = 1) -> None:
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
            self._ttft.observe(now - self.arrived)
        if not num_tokens:
            return
        last = self.last_token_at.get(sample_index)
        if last is not None:
            self._itl.observe((now - last) / num_tokens)
        self.last_token_at[sample_index] = now


def planned_tokens(plan: RequestPlan) -> int:
    """Tokens a planned request may consume: its prompt plus every sample's budget (at most the
    cost ceiling's)."""
    num_generated = plan.budget.max_tokens * plan.num_samples
    if plan.budget.max_total_tokens:
        num_generated = min(num_generated, plan.budget.max_total_tokens)
    return len(plan.prompt_token_ids) + num_generated


def _seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.time())
