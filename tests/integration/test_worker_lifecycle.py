"""A worker's life: ready only when loaded, health and reflection, graceful drain on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tests.integration.helpers import decode_stub

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tiny_model_dir, tmp_path):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=512)
    with LocalCluster(config, tmp_path) as running:
        yield running


def test_ready_workers_report_serving_and_list_their_services(cluster):
    for child, service in ((cluster.decode[0], "tandem.v1.DecodeWorker"),
                           (cluster.prefill[0], "tandem.v1.PrefillWorker")):
        channel = grpc.insecure_channel(cluster.worker_address(child))
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for answer in answers for s in answer.list_services_response.service}
        assert service in names and "grpc.health.v1.Health" in names


def test_sigterm_finishes_in_flight_work_refuses_new_work_and_exits(cluster):
    decode = decode_stub(cluster.worker_address(cluster.decode[0]))
    request = worker_pb2.DecodeRequest(
        request_id="in-flight", prompt_token_ids=list(range(5, 40)), colocated=True,
        sampling=inference_pb2.SamplingParams(temperature=0.0),
        budget=worker_pb2.DecodeBudget(max_tokens=400))
    stream = decode.Decode(request, timeout=60)
    received = list(next(stream).token_ids)
    cluster.decode[0].process.send_signal(signal.SIGTERM)
    with pytest.raises(grpc.RpcError) as refused:
        decode.Reserve(worker_pb2.ReserveRequest(request_id="late", prompt_token_ids=[5, 6, 7]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finish = None
    for chunk in stream:
        received.extend(chunk.token_ids)
        finish = chunk.finish_reason or finish
    assert finish == inference_pb2.FINISH_REASON_LENGTH
    assert len(received) == 400
    assert cluster.decode[0].process.wait(timeout=30) == 0


def test_generate_command_streams_an_answer_through_the_router(cluster):
    result = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "generate", "--router", cluster.grpc_address,
         "--max-tokens", "5", "--temperature", "0", "--json", "Hello there"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["usage"]["completion_tokens"] == 5
