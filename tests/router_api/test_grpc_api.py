"""The gRPC front door: Inference over a real grpc.aio server, health, reflection, errors, cancellation."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tests.router_api.conftest import API_KEY, LIMITED_KEY, sample_tokens

BEARER = (("authorization", f"Bearer {API_KEY}"),)


@pytest.fixture
async def channel(front_doors):
    async with grpc.aio.insecure_channel(front_doors.grpc_target) as channel:
        yield channel


async def test_generate_streams_the_service_responses(front_doors, channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    request = inference_pb2.GenerateRequest(model="small", prompt="a b c",
                                            budget=inference_pb2.Budget(max_tokens=3))
    responses = [r async for r in stub.Generate(request, metadata=BEARER)]
    assert responses[0].routing.model == "small"
    assert "".join(r.text for r in responses) == "".join(sample_tokens(0, 3))
    assert responses[-1].usage.prompt_tokens == 3 and responses[-1].usage.completion_tokens == 3
    assert front_doors.service.calls[-1].tenant.name == "acme"


async def test_list_models_with_x_api_key(channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    reply = await stub.ListModels(inference_pb2.ListModelsRequest(), metadata=(("x-api-key", API_KEY),))
    assert [m.id for m in reply.models] == ["small", "large"]


@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer sk-wrong"),),
                                      (("authorization", f"Basic {API_KEY}"),)])
async def test_missing_or_bad_key_is_unauthenticated(front_doors, channel, metadata):
    stub = inference_pb2_grpc.InferenceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        await stub.ListModels(inference_pb2.ListModelsRequest(), metadata=metadata)
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for _ in stub.Generate(inference_pb2.GenerateRequest(prompt="x"), metadata=metadata):
            pass
    assert excinfo.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert front_doors.service.calls == []


async def test_unknown_model_is_not_found(channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for _ in stub.Generate(inference_pb2.GenerateRequest(model="gigantic", prompt="x"),
                                     metadata=BEARER):
            pass
    assert excinfo.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gigantic" in excinfo.value.details()


async def test_quota_refusal_is_resource_exhausted_with_retry_after_ms(channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    metadata = (("authorization", f"Bearer {LIMITED_KEY}"),)
    request = inference_pb2.GenerateRequest(prompt="hi", budget=inference_pb2.Budget(max_tokens=20))
    assert len([r async for r in stub.Generate(request, metadata=metadata)]) > 1
    call = stub.Generate(request, metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as excinfo:
        async for _ in call:
            pass
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(excinfo.value.trailing_metadata())
    # 12 of the 21 tokens are missing at 1 token/s.
    assert trailing["retry-after-ms"] == "12000"


async def test_client_cancel_closes_the_service_stream(front_doors, channel):
    stub = inference_pb2_grpc.InferenceStub(channel)
    call = stub.Generate(inference_pb2.GenerateRequest(prompt="SLOW", budget=inference_pb2.Budget(max_tokens=1000)),
                         metadata=BEARER)
    await call.read()
    await call.read()
    call.cancel()
    service_call = front_doors.service.calls[-1]
    await asyncio.wait_for(service_call.closed.wait(), timeout=60)
    assert service_call.num_sent < 1000
    cancelled = 'tandem_requests_total{model="small",outcome="cancelled"} 1.0'
    for _ in range(3000):  # the outcome is counted as the close unwinds through the admission layer
        if cancelled in front_doors.metrics.exposition()[0].decode():
            break
        await asyncio.sleep(0.02)
    assert cancelled in front_doors.metrics.exposition()[0].decode()


async def test_health_check_reports_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tandem.v1.Inference"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_and_describes_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="tandem.v1.Inference")]
    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"tandem.v1.Inference", "grpc.health.v1.Health"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto
