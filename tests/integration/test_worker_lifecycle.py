"""A worker's life: ready only when loaded, health and reflection, graceful drain on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tandem.serving.process_group import ChildProcess, tail
from tests.integration.helpers import decode_stub, greedy_request, router_stub

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


# Long enough for a loaded 2-core machine; the harness would SIGKILL a worker that needs more.
EXIT_TIMEOUT_S = 60.0


def _exit_code_after_sigterm(child: ChildProcess) -> int:
    """SIGTERMs a worker and waits for it to exit by itself (a SIGKILL fails the test)."""
    child.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = child.process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()
        pytest.fail(f"{child.name} was still running {EXIT_TIMEOUT_S:.0f}s after SIGTERM and had "
                    f"to be killed; last log lines:\n{tail(child.log_path)}")
    assert code == 0, f"{child.name} exited with {code}:\n{tail(child.log_path)}"
    return time.monotonic() - started


@pytest.fixture
def quick_drain_cluster(tiny_model_dir, tmp_path):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1,
                                num_blocks=512, worker_args=["--drain-seconds", "1"])
    with LocalCluster(config, tmp_path) as running:
        yield running


def test_idle_workers_exit_by_themselves_after_sigterm(quick_drain_cluster):
    for child in (quick_drain_cluster.decode[0], quick_drain_cluster.prefill[0]):
        _exit_code_after_sigterm(child)


def test_workers_exit_by_themselves_after_sigterm_once_they_served_requests(quick_drain_cluster):
    router = router_stub(quick_drain_cluster.grpc_address)
    for index in range(3):
        responses = list(router.Generate(greedy_request([5 + index] * 40, max_tokens=8), timeout=60))
        assert sum(len(response.token_ids) for response in responses) == 8
    for child in (quick_drain_cluster.decode[0], quick_drain_cluster.prefill[0]):
        _exit_code_after_sigterm(child)
