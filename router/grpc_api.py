"""gRPC front door: the `tandem.v1.Inference` servicer, plus health checking and reflection.

Authentication comes from the metadata `authorization: Bearer <key>` (or `x-api-key`). A
RouterError becomes its gRPC status (RESOURCE_EXHAUSTED carries `retry-after-ms` in the trailing
metadata). When the client cancels, grpc.aio cancels the handler and the service's stream is closed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context

from router.auth import Authenticator, Tenant, api_key_from_pairs
from router.errors import ErrorCode, RouterError
from router.request_plan import MAX_REQUEST_BYTES
from router.service import GenerationService
from router.tls import TlsConfig
from tandem.api.v1 import inference_pb2, inference_pb2_grpc
from tandem.telemetry.tracing import server_span

log = logging.getLogger(__name__)

INFERENCE_SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # A larger request is refused by gRPC itself (RESOURCE_EXHAUSTED naming both sizes).
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class InferenceServicer(inference_pb2_grpc.InferenceServicer):
    """Serves tandem.v1.Inference from a GenerationService."""

    def __init__(self, service: GenerationService, authenticator: Authenticator) -> None:
        self.service = service
        self.authenticator = authenticator

    async def Generate(self, request: inference_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        """Streams the responses of one request."""
        metadata = context.invocation_metadata() or ()
        tenant = await self._tenant(metadata, context)
        with server_span("tandem.v1.Inference/Generate", metadata, tenant=tenant.name, model=request.model):
            stream = self.service.generate(request, tenant, trace_context=otel_context.get_current())
            # Written from a coroutine, not yielded from an async generator: grpc.aio may leave a
            # cancelled generator paused at its yield, and then the workers are never cancelled.
            try:
                async with contextlib.aclosing(stream):
                    async for response in stream:
                        await context.write(response)
            except RouterError as exc:
                await _abort(context, exc)
            except Exception:
                log.exception("unexpected error in Generate")
                await _abort(context, RouterError(ErrorCode.INTERNAL, "internal error; see the router's log"))

    async def ListModels(self, request: inference_pb2.ListModelsRequest,
                         context: grpc.aio.ServicerContext) -> inference_pb2.ListModelsResponse:
        """Lists the models this deployment serves."""
        await self._tenant(context.invocation_metadata() or (), context)
        try:
            return inference_pb2.ListModelsResponse(models=self.service.list_models())
        except RouterError as exc:
            await _abort(context, exc)

    async def _tenant(self, metadata, context: grpc.aio.ServicerContext) -> Tenant:
        try:
            return self.authenticator.authenticate(api_key_from_pairs(metadata))
        except RouterError as exc:
            await _abort(context, exc)


async def _abort(context: grpc.aio.ServicerContext, error: RouterError) -> None:
    await context.abort(error.code.grpc_code, error.message, trailing_metadata=error.grpc_trailing_metadata())


@dataclass(slots=True)
class GrpcServer:
    """The router's grpc.aio server with its bound port and health servicer."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer

    async def start(self) -> None:
        """Starts serving and reports SERVING for the server and the Inference service."""
        await self.server.start()
        await self.set_serving(True)

    async def set_serving(self, is_serving: bool) -> None:
        """Sets the health status reported to load balancers and probes."""
        status = (health_pb2.HealthCheckResponse.SERVING if is_serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", INFERENCE_SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Reports NOT_SERVING, then stops, letting running calls finish for grace_s seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


def build_grpc_server(service: GenerationService, authenticator: Authenticator, *,
                      host: str = "0.0.0.0", port: int = 0, tls: TlsConfig | None = None) -> GrpcServer:
    """A grpc.aio server with Inference, health and reflection, bound to host:port (0: a free port)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    inference_pb2_grpc.add_InferenceServicer_to_server(InferenceServicer(service, authenticator), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [INFERENCE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{host}:{port}"
    bound_port = (server.add_secure_port(address, tls.grpc_credentials()) if tls
                  else server.add_insecure_port(address))
    if bound_port == 0:
        raise OSError(f"cannot bind the gRPC server to {address}")
    return GrpcServer(server, bound_port, health_servicer)
