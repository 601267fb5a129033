"""Worker authentication on a real grpc.aio WorkerServer: every worker-API method needs the token.

The server mounts the generated DecodeWorker and PrefillWorker base servicers, which answer
UNIMPLEMENTED: a call that gets UNIMPLEMENTED passed authentication, one that gets
UNAUTHENTICATED did not. The methods come from the .proto's descriptors, so a method added
later is covered without editing this test.
"""

from __future__ import annotations

import argparse
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.api.v1 import worker_pb2, worker_pb2_grpc
from tandem.serving.grpc_server import ServiceBinding, WorkerServer
from tandem.serving.worker_auth import (TOKEN_ENV, add_worker_auth_arguments, new_worker_token,
                                        read_token_file, worker_token_from_args, worker_token_interceptors,
                                        write_token_file)
from tandem.telemetry.metrics import default_metrics

TOKEN = new_worker_token()
SERVICES = [worker_pb2.DESCRIPTOR.services_by_name[name] for name in ("DecodeWorker", "PrefillWorker")]
METHODS = [(service.full_name, method) for service in SERVICES for method in service.methods]


@pytest.fixture
async def address():
    bindings = [ServiceBinding(worker_pb2_grpc.add_DecodeWorkerServicer_to_server,
                               worker_pb2_grpc.DecodeWorkerServicer(), "tandem.v1.DecodeWorker"),
                ServiceBinding(worker_pb2_grpc.add_PrefillWorkerServicer_to_server,
                               worker_pb2_grpc.PrefillWorkerServicer(), "tandem.v1.PrefillWorker")]
    server = WorkerServer(bindings, "127.0.0.1", 0, worker_token=TOKEN)
    await server.start()
    await server.set_ready(True)
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def _call(address: str, token: str | None, service: str, method) -> grpc.StatusCode:
    interceptors = worker_token_interceptors(token) if token is not None else None
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        path = f"/{service}/{method.name}"
        empty = b""  # an empty message of any request type
        try:
            if method.server_streaming:
                call = channel.unary_stream(path)(empty, timeout=10)
                async for _ in call:
                    pass
            else:
                await channel.unary_unary(path)(empty, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _refused(reason: str) -> float:
    return default_metrics().registry.get_sample_value(
        "tandem_worker_auth_refused_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("presented", ["missing", "wrong"])
async def test_every_worker_method_refuses_a_call_without_the_right_token(address, presented):
    token = None if presented == "missing" else new_worker_token()
    before = _refused(presented)
    codes = {f"{service}/{method.name}": await _call(address, token, service, method)
             for service, method in METHODS}
    assert codes == {name: grpc.StatusCode.UNAUTHENTICATED for name in codes}
    assert {"tandem.v1.DecodeWorker/Reserve", "tandem.v1.DecodeWorker/Decode",
            "tandem.v1.DecodeWorker/Cancel", "tandem.v1.PrefillWorker/Prefill",
            "tandem.v1.PrefillWorker/GetLoad"} <= set(codes)
    assert _refused(presented) == before + len(METHODS)


async def test_the_right_token_reaches_every_method(address):
    codes = {f"{service}/{method.name}": await _call(address, TOKEN, service, method)
             for service, method in METHODS}
    assert codes == {name: grpc.StatusCode.UNIMPLEMENTED for name in codes}


async def test_health_checks_and_reflection_need_no_token(address):
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.v1.DecodeWorker"), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        replies = [r async for r in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"tandem.v1.DecodeWorker", "tandem.v1.PrefillWorker"} <= names


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_worker_auth_arguments(parser)
    return parser.parse_args(argv)


def test_a_token_file_is_written_private_and_read_back(tmp_path):
    path = write_token_file(tmp_path / "worker-token")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert read_token_file(path) == path.read_text().strip()
    with pytest.raises(FileExistsError):
        write_token_file(path)  # never overwrites a token that processes may already hold


@pytest.mark.parametrize("content, problem", [("", "is empty"), ("short", "at least 32"),
                                             ("x" * 40 + " y", "printable ASCII"),
                                             ("é" * 40, "printable ASCII")])
def test_a_bad_token_file_is_refused_with_the_reason(tmp_path, content, problem):
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem):
        read_token_file(path)


def test_a_process_needs_a_token_or_the_explicit_insecure_flag(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit, match="--worker-token-file"):
        worker_token_from_args(_parse([]))
    with pytest.raises(SystemExit, match="does not exist"):
        worker_token_from_args(_parse(["--worker-token-file", str(tmp_path / "absent")]))
    path = write_token_file(tmp_path / "token")
    with pytest.raises(SystemExit, match="not both"):
        worker_token_from_args(_parse(["--worker-token-file", str(path), "--insecure-no-worker-auth"]))
    assert worker_token_from_args(_parse(["--worker-token-file", str(path)])) == read_token_file(path)
    assert worker_token_from_args(_parse(["--insecure-no-worker-auth"])) is None
    assert "without authentication" in caplog.text
    monkeypatch.setenv(TOKEN_ENV, str(path))
    assert worker_token_from_args(_parse([])) == read_token_file(path)
