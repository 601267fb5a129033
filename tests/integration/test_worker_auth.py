"""Worker authentication across real processes: workers refuse calls without the cluster's token,
the router's pool carries it, and no process starts without a token unless told to.

The worker methods come from the .proto's descriptors (every method of both worker services).
An empty request is enough: authentication runs before the request is even parsed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router.worker_pool import WorkerPool
from tandem.api.v1 import worker_pb2
from tandem.local_cluster import LocalCluster, LocalClusterConfig
from tandem.serving.worker_auth import (TOKEN_ENV, authenticated_channel, new_worker_token,
                                        worker_token_from_args)
from tests.integration.helpers import worker_token

pytestmark = pytest.mark.slow

SERVICES = {"decode": worker_pb2.DESCRIPTOR.services_by_name["DecodeWorker"],
            "prefill": worker_pb2.DESCRIPTOR.services_by_name["PrefillWorker"]}


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, tmp_path_factory):
    config = LocalClusterConfig(model=str(tiny_model_dir), num_prefill=1, num_decode=1, num_blocks=128)
    with LocalCluster(config, tmp_path_factory.mktemp("cluster")) as running:
        yield running


def _addresses(cluster) -> dict[str, str]:
    return {"decode": cluster.worker_address(cluster.decode[0]),
            "prefill": cluster.worker_address(cluster.prefill[0])}


def _codes(channel: grpc.Channel, role: str) -> dict[str, grpc.StatusCode]:
    service = SERVICES[role]
    codes = {}
    for method in service.methods:
        path = f"/{service.full_name}/{method.name}"
        try:
            if method.server_streaming:
                for _ in channel.unary_stream(path)(b"", timeout=20):
                    pass
            else:
                channel.unary_unary(path)(b"", timeout=20)
            codes[method.name] = grpc.StatusCode.OK
        except grpc.RpcError as error:
            codes[method.name] = error.code()
    return codes


@pytest.mark.parametrize("presented", ["no token", "a wrong token"])
def test_every_worker_method_refuses_callers_without_the_token(cluster, presented):
    for role, address in _addresses(cluster).items():
        channel = (grpc.insecure_channel(address) if presented == "no token"
                   else authenticated_channel(address, new_worker_token()))
        codes = _codes(channel, role)
        assert codes == {name: grpc.StatusCode.UNAUTHENTICATED for name in codes}, role
        assert "GetLoad" in codes and "Cancel" in codes


def test_the_cluster_token_reaches_the_workers(cluster):
    for role, address in _addresses(cluster).items():
        codes = _codes(authenticated_channel(address, worker_token()), role)
        assert codes["GetLoad"] == grpc.StatusCode.OK, codes
        assert grpc.StatusCode.UNAUTHENTICATED not in codes.values(), codes


def test_health_checks_need_no_token(cluster):
    for role, address in _addresses(cluster).items():
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
            health_pb2.HealthCheckResponse.SERVING, role


@pytest.mark.parametrize("token, is_healthy", [("cluster", True), ("wrong", False)])
async def test_the_router_pool_polls_workers_with_its_token(cluster, token, is_healthy):
    pool = WorkerPool(worker_token=worker_token() if token == "cluster" else new_worker_token())
    pool.set_endpoints([(address, role) for role, address in _addresses(cluster).items()])
    await pool.poll_once()
    try:
        assert [bool(pool.healthy(role)) for role in ("decode", "prefill")] == [is_healthy] * 2
    finally:
        await pool.stop()


@pytest.mark.parametrize("command", ["decode", "prefill", "router"])
def test_no_process_starts_without_a_worker_token(command, tiny_model_dir):
    env = {key: value for key, value in os.environ.items() if key != TOKEN_ENV}
    args = [sys.executable, "-m", "tandem.cli", command, "--model", str(tiny_model_dir)]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no worker token: give --worker-token-file" in result.stderr, result.stderr[-2000:]


def test_a_local_cluster_without_a_token_writes_a_private_one_its_processes_read(
        tiny_model_dir, tmp_path, monkeypatch):
    import argparse

    import decode_worker.main
    import prefill_worker.main
    import router.main

    monkeypatch.delenv(TOKEN_ENV)
    cluster = LocalCluster(LocalClusterConfig(model=str(tiny_model_dir)), tmp_path)
    assert cluster.worker_token_file.parent == tmp_path
    assert os.stat(cluster.worker_token_file).st_mode & 0o777 == 0o600
    commands = {"router": (router.main, cluster._router_args()),
                "decode": (decode_worker.main, cluster._worker_args("decode", "decode-0", None)),
                "prefill": (prefill_worker.main, cluster._worker_args("prefill", "prefill-0", None))}
    for name, (module, argv) in commands.items():
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert argv[0] == name
        args = parser.parse_args(argv[1:])
        assert worker_token_from_args(args) == cluster.worker_token, name
