"""A deterministic GenerationService and real gRPC/HTTP front doors on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from router.admission import AdmittedService
from router.auth import Authenticator, Tenant
from router.errors import ErrorCode, RouterError
from router.grpc_api import build_grpc_server
from router.http_api import build_http_app, start_http_server
from tandem.api.v1 import inference_pb2
from tandem.policy.quota import QuotaPolicy, TenantQuota
from tandem.telemetry.metrics import Metrics

API_KEY = "sk-test-acme"
LIMITED_KEY = "sk-test-limited"
MODELS = [
    inference_pb2.ModelInfo(id="small", max_context=4096, price_per_1k_prompt_tokens=0.1,
                            price_per_1k_completion_tokens=0.2),
    inference_pb2.ModelInfo(id="large", max_context=8192, price_per_1k_prompt_tokens=1.0,
                            price_per_1k_completion_tokens=2.0, supports_thinking=True),
]
NUM_THINKING_TOKENS = 2


def sample_tokens(sample_index: int, num_tokens: int) -> list[str]:
    """The text pieces the fake service produces for one sample."""
    return [f"s{sample_index}t{j} " for j in range(num_tokens)]


@dataclass
class RecordedCall:
    """One generate() call as the fake service saw it."""

    request: inference_pb2.GenerateRequest
    tenant: Tenant
    trace_context: object
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    num_sent: int = 0


class FakeGenerationService:
    """Yields a few tokens per sample; the prompt text selects failures and slow streams."""

    def __init__(self) -> None:
        self.calls: list[RecordedCall] = []
        self._next_id = 0

    def list_models(self) -> list[inference_pb2.ModelInfo]:
        return list(MODELS)

    async def generate(self, request, tenant, *, trace_context=None, on_planned=None):
        call = RecordedCall(inference_pb2.GenerateRequest.FromString(request.SerializeToString()),
                            tenant, trace_context)
        self.calls.append(call)
        try:
            prompt = request.prompt or " ".join(m.content for m in request.chat.messages)
            if request.model and request.model not in {m.id for m in MODELS}:
                raise RouterError(ErrorCode.NOT_FOUND, f"model {request.model!r} does not exist", param="model")
            if "FAIL_UNAVAILABLE" in prompt:
                raise RouterError(ErrorCode.UNAVAILABLE, "no decode worker answered")
            self._next_id += 1
            request_id = request.request_id or f"req-{self._next_id}"
            model = request.model or "small"
            yield inference_pb2.GenerateResponse(
                request_id=request_id, routing=inference_pb2.RoutingInfo(
                    model=model, difficulty=0.25, probe_difficulty=-1, estimator="fake"))
            call.num_sent += 1
            async for response in self._samples(request, request_id, prompt, call):
                yield response
        finally:
            call.closed.set()

    async def _samples(self, request, request_id, prompt, call):
        num_tokens = request.budget.max_tokens if request.budget.HasField("max_tokens") else 4
        num_samples = max(1, request.sampling.n)
        is_thinking = request.budget.thinking
        for sample_index in range(num_samples):
            pieces = sample_tokens(sample_index, num_tokens)
            for j, piece in enumerate(pieces):
                if "SLOW" in prompt:
                    await asyncio.sleep(0.05)
                if "FAIL_MIDSTREAM" in prompt and j == 1:
                    raise RouterError(ErrorCode.UNAVAILABLE, "decode worker lost mid-stream")
                section = (inference_pb2.TOKEN_SECTION_THINKING if is_thinking and j < NUM_THINKING_TOKENS
                           else inference_pb2.TOKEN_SECTION_ANSWER)
                response = inference_pb2.GenerateResponse(
                    request_id=request_id, sample_index=sample_index, text=piece,
                    token_ids=[100 * sample_index + j], section=section)
                if request.sampling.logprobs:
                    response.logprobs.add(
                        token_id=100 * sample_index + j, token=piece, logprob=-0.5 * (j + 1),
                        top=[inference_pb2.TopLogprob(token_id=k, token=f"alt{k}", logprob=-1.0 - k)
                             for k in range(request.sampling.top_logprobs)])
                if j == len(pieces) - 1:
                    response.finish_reason = inference_pb2.FINISH_REASON_LENGTH
                yield response
                call.num_sent += 1
        thinking = NUM_THINKING_TOKENS * num_samples if is_thinking else 0
        yield inference_pb2.GenerateResponse(request_id=request_id, usage=inference_pb2.Usage(
            prompt_tokens=len(prompt.split()), completion_tokens=num_tokens * num_samples,
            thinking_tokens=thinking, answer_tokens=num_tokens * num_samples - thinking,
            num_samples=num_samples, cost=0.001))


@dataclass
class FrontDoors:
    """The running servers and what the tests inspect."""

    service: FakeGenerationService
    metrics: Metrics
    http_url: str
    grpc_target: str


@pytest.fixture
def fake_service() -> FakeGenerationService:
    return FakeGenerationService()


@pytest.fixture
async def front_doors(fake_service):
    # A limited tenant whose token bucket holds one small request at a time.
    authenticator = Authenticator({
        API_KEY: Tenant("acme"),
        LIMITED_KEY: Tenant("limited", quota=TenantQuota(tokens_per_minute=60, burst_tokens=30)),
    })
    metrics = Metrics.create()
    # A frozen clock: buckets do not refill during a test, so retry hints are exact.
    service = AdmittedService(fake_service, QuotaPolicy(), metrics=metrics, clock=lambda: 1000.0)
    http = await start_http_server(build_http_app(service, authenticator, metrics=metrics), "127.0.0.1", 0)
    grpc_server = build_grpc_server(service, authenticator, host="127.0.0.1", port=0)
    await grpc_server.start()
    try:
        yield FrontDoors(fake_service, metrics, f"http://127.0.0.1:{http.port}",
                         f"127.0.0.1:{grpc_server.port}")
    finally:
        await grpc_server.stop(0)
        await http.close()
