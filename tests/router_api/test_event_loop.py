"""A huge prompt is tokenized off the router's event loop: other requests and health checks go on.

The router's real planning path (admission, RouterCore, the model's real tokenizer) sits behind a
real gRPC server in this process, sharing the test's event loop. No request here reaches a
worker: each one is refused by planning after its tokenization, which is the work under test.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.admission import AdmittedService
from router.auth import Authenticator, Tenant
from router.core import RouterCore
from router.grpc_api import build_grpc_server
from router.request_plan import ModelEntry
from router.routing_brain import RoutingBrain
from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tandem.policy.quota import QuotaPolicy
from tandem.telemetry.metrics import Metrics

API_KEY = "sk-loop"
# Big enough that its prompt passes the size check, small enough that the huge prompt overflows it.
MAX_CONTEXT = 200_000
HUGE_PROMPT = "All work and no play makes a dull model. " * 75_000  # 3 MB: several contexts of tokens


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from tandem.engine.tiny_model import make_tiny_model
    from tandem.engine.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("tiny")
    make_tiny_model(path)
    return Tokenizer.from_model_dir(path)


@pytest.fixture
async def channel(tokenizer):
    core = RouterCore({"tiny": ModelEntry("tiny", tokenizer, MAX_CONTEXT)}, dispatcher=None,
                      brain=RoutingBrain(default_model="tiny"))
    service = AdmittedService(core, QuotaPolicy(), metrics=Metrics.create())
    server = build_grpc_server(service, Authenticator({API_KEY: Tenant("acme")}), host="127.0.0.1")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield channel
    finally:
        await server.stop(0)


async def _refusal(channel, request) -> grpc.aio.AioRpcError:
    stub = inference_pb2_grpc.InferenceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for _ in stub.Generate(request, metadata=(("authorization", f"Bearer {API_KEY}"),)):
            pass
    return excinfo.value


HUGE_REQUESTS = {
    "prompt": inference_pb2.GenerateRequest(prompt=HUGE_PROMPT),
    "chat": inference_pb2.GenerateRequest(chat=inference_pb2.ChatInput(
        messages=[inference_pb2.ChatMessage(role="user", content=HUGE_PROMPT)])),
}


@pytest.mark.parametrize("kind", sorted(HUGE_REQUESTS))
async def test_small_requests_and_health_checks_finish_while_a_huge_input_is_tokenized(channel, kind):
    big = asyncio.create_task(_refusal(channel, HUGE_REQUESTS[kind]))
    health = health_pb2_grpc.HealthStub(channel)
    num_small = 0
    for _ in range(10):
        # Planned in full (tokenized, then refused for asking more than the context holds).
        small = await _refusal(channel, inference_pb2.GenerateRequest(
            prompt="hello there", budget=inference_pb2.Budget(max_tokens=MAX_CONTEXT)))
        assert small.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_tokens" in small.details()
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        num_small += not big.done()
    error = await big
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "context" in error.details()
    assert num_small == 10, f"only {num_small} small requests finished before the huge one"


class _ReadOnlyAtTheEnd(list):
    """A prompt that may be sliced but not walked whole."""

    def __iter__(self):
        raise AssertionError("the whole prompt was read")


def test_detokenizing_a_sample_reads_only_the_end_of_a_long_prompt(tokenizer):
    from router.sample_text import ANSWER, SampleText

    prompt = tokenizer.encode("A long preamble. " * 20_000 + "The end")
    output = tokenizer.encode(" of the story, told once more.", add_special_tokens=False)
    texts = []
    for given in (list(prompt), _ReadOnlyAtTheEnd(prompt)):
        sample = SampleText(tokenizer, given, stop=[])
        pieces = sample.add(output, [ANSWER] * len(output), []) + [sample.finish()]
        texts.append("".join(p.text for p in pieces if p is not None))
    assert texts[0] == texts[1] and texts[0]
