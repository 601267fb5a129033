"""Admission in front of a GenerationService: tenant quotas on the way in, usage and outcome on the way out.

`AdmittedService` wraps the orchestration and is itself a GenerationService, so both front doors
(gRPC and HTTP) enforce the same quotas and count the same outcomes. It charges each request an
estimate on admission (prompt length plus its token budget), replaces it with what the plan may
spend once the request is planned (the real prompt plus every sample's budget, as the routing
policy set them; refused then if the tenant's bucket cannot cover it), corrects the charge with
the usage reported on the stream's last message, and counts `tandem_requests_total{outcome, model}`.
Before admission it refuses a bad request id and input too large for the model's context, so that
a huge request costs nothing. The model label is a served model's name, "auto" (none asked for,
"auto", or the deployment's own name) or "unknown": a client's made-up name never becomes a metric series.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable

from opentelemetry.context import Context

from router.auth import Tenant
from router.errors import ErrorCode, RouterError
from router.request_plan import check_input_size, check_request_id
from router.service import GenerationService
from tandem.api.v1 import inference_pb2
from tandem.policy.quota import QuotaPolicy, Refusal
from tandem.telemetry.metrics import Metrics

# A rough characters-per-token ratio for estimating a prompt before it is tokenized.
CHARS_PER_TOKEN = 4


def estimate_prompt_tokens(request: inference_pb2.GenerateRequest) -> int:
    """Prompt tokens of a request: exact for token input, estimated from the text length otherwise."""
    input_kind = request.WhichOneof("input")
    if input_kind == "tokens":
        return len(request.tokens.token_ids)
    if input_kind == "chat":
        num_chars = sum(len(m.content) + len(m.role) for m in request.chat.messages)
        return math.ceil(num_chars / CHARS_PER_TOKEN)
    return math.ceil(len(request.prompt) / CHARS_PER_TOKEN)


def estimate_request_tokens(request: inference_pb2.GenerateRequest, default_max_tokens: int = 256) -> int:
    """Tokens a request may consume: its prompt plus max_tokens (default_max_tokens when unset) per sample."""
    budget = request.budget
    max_tokens = budget.max_tokens if budget.HasField("max_tokens") else default_max_tokens
    return estimate_prompt_tokens(request) + max_tokens * max(1, request.sampling.n)


class AdmittedService:
    """A GenerationService that admits requests against tenant quotas before the inner one runs."""

    def __init__(self, inner: GenerationService, quotas: QuotaPolicy, *, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 estimate_tokens: Callable[[inference_pb2.GenerateRequest], int] = estimate_request_tokens,
                 is_auto_model: Callable[[str], bool] = lambda model: not model,
                 ) -> None:
        self.inner = inner
        self.quotas = quotas
        self.metrics = metrics
        self.clock = clock
        self.estimate_tokens = estimate_tokens
        self.is_auto_model = is_auto_model  # "auto" and the deployment's name let the router choose
        # The front doors run on one event loop, but a metrics scrape or a test may read from another thread.
        self._lock = threading.Lock()

    def list_models(self) -> list[inference_pb2.ModelInfo]:
        """The inner service's models."""
        return self.inner.list_models()

    async def generate(self, request: inference_pb2.GenerateRequest, tenant: Tenant, *,
                       trace_context: Context | None = None) -> AsyncIterator[inference_pb2.GenerateResponse]:
        """Admits the request (or raises RESOURCE_EXHAUSTED with a retry hint), then relays the inner stream."""
        served = {m.id: m.max_context for m in self.inner.list_models()}
        try:
            check_request_input(request, served)
        except RouterError as exc:
            self._count(exc.code.name.lower(), request.model, served)
            raise
        estimated = self.estimate_tokens(request)
        with self._lock:
            decision = self.quotas.admit(tenant, estimated, self.clock())
        if isinstance(decision, Refusal):
            self._count("rejected_quota", request.model, served)
            raise RouterError(ErrorCode.RESOURCE_EXHAUSTED, decision.message, decision.retry_after_s)
        outcome, model = "cancelled", request.model
        num_prompt_tokens = num_generated = None
        num_seen_tokens = 0
        admission, refused_when_planned = decision, []

        def on_planned(num_tokens: int) -> None:
            nonlocal admission
            with self._lock:
                recharged = self.quotas.recharge(admission, num_tokens, self.clock())
            if isinstance(recharged, Refusal):
                refused_when_planned.append(recharged)
                raise RouterError(ErrorCode.RESOURCE_EXHAUSTED, recharged.message,
                                  recharged.retry_after_s)
            admission = recharged

        try:
            stream = self.inner.generate(request, tenant, trace_context=trace_context,
                                         on_planned=on_planned)
            async with contextlib.aclosing(stream):
                async for response in stream:
                    if response.HasField("routing") and response.routing.model:
                        model = response.routing.model
                    if response.HasField("usage"):
                        num_prompt_tokens = response.usage.prompt_tokens
                        num_generated = response.usage.completion_tokens
                    num_seen_tokens += len(response.token_ids)
                    yield response
            outcome = "ok"
        except RouterError as exc:
            outcome = "rejected_quota" if refused_when_planned else exc.code.name.lower()
            raise
        except Exception:
            outcome = "internal"
            raise
        finally:
            if num_prompt_tokens is not None and num_generated is not None:
                actual = num_prompt_tokens + num_generated
            elif num_seen_tokens == 0 and outcome not in ("ok", "cancelled"):
                actual = 0  # refused before any work
            else:
                # Cancelled or failed mid-way: the prompt and the tokens made so far, at most the estimate.
                actual = min(admission.charged_tokens, estimate_prompt_tokens(request) + num_seen_tokens)
            with self._lock:
                self.quotas.release(admission, actual, self.clock())
            self._count(outcome, model, served)

    def _count(self, outcome: str, model: str, served: dict[str, int]) -> None:
        if self.metrics is not None:
            label = model if model in served else "auto" if self.is_auto_model(model) else "unknown"
            self.metrics.requests.labels(outcome=outcome, model=label).inc()


def check_request_input(request: inference_pb2.GenerateRequest, served: dict[str, int]) -> None:
    """Refuses a bad request id, or input too large for the model asked for (else the widest served)."""
    check_request_id(request.request_id)
    if request.model in served:
        check_input_size(request, served[request.model], request.model)
    elif served:
        widest = max(served, key=served.get)
        check_input_size(request, served[widest], widest)
