"""Both front doors over TLS with a self-signed certificate made by the openssl command."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import aiohttp
import grpc
import pytest

from router.auth import Authenticator, Tenant
from router.grpc_api import build_grpc_server
from router.http_api import build_http_app, start_http_server
from router.tls import TlsConfig, tls_from_args
from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tests.router_api.conftest import API_KEY, FakeGenerationService


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return TlsConfig(str(cert), str(key))


async def test_grpc_and_http_serve_over_tls(certificate):
    service, auth = FakeGenerationService(), Authenticator({API_KEY: Tenant("acme")})
    grpc_server = build_grpc_server(service, auth, host="127.0.0.1", port=0, tls=certificate)
    await grpc_server.start()
    http = await start_http_server(build_http_app(service, auth), "127.0.0.1", 0, tls=certificate)
    try:
        with open(certificate.cert_file, "rb") as file:
            credentials = grpc.ssl_channel_credentials(root_certificates=file.read())
        async with grpc.aio.secure_channel(f"localhost:{grpc_server.port}", credentials) as channel:
            reply = await inference_pb2_grpc.InferenceStub(channel).ListModels(
                inference_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {API_KEY}"),))
        assert [m.id for m in reply.models] == ["small", "large"]

        context = ssl.create_default_context(cafile=certificate.cert_file)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {API_KEY}"}) as session:
            async with session.get(f"https://localhost:{http.port}/v1/models", ssl=context) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://localhost:{http.port}/v1/models")
    finally:
        await grpc_server.stop(0)
        await http.close()


def test_tls_settings_need_both_files(tmp_path):
    assert tls_from_args(None, None) is None
    with pytest.raises(ValueError, match="--tls-key"):
        tls_from_args("cert.pem", None)
    with pytest.raises(ValueError, match="not a readable file"):
        TlsConfig(str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"))
