"""gRPC server scaffolding shared by the workers: health, reflection, readiness, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tandem.serving.worker_auth import WorkerAuthInterceptor

log = logging.getLogger(__name__)

# Channel options: large enough for hidden states and long prompts, keepalive to notice dead peers.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(slots=True)
class ServiceBinding:
    """One service to mount: its generated add_*_to_server function, servicer and full name."""

    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object
    full_name: str


class WorkerServer:
    """A grpc.aio server with health checking and reflection whose readiness the owner sets.

    With a worker_token, every call to the mounted services must carry it (health and reflection
    stay open); None serves them to any caller (--insecure-no-worker-auth).
    """

    def __init__(self, bindings: Sequence[ServiceBinding], host: str, port: int, *,
                 worker_token: str | None) -> None:
        interceptors = [WorkerAuthInterceptor(worker_token)] if worker_token is not None else None
        self.server = grpc.aio.server(options=CHANNEL_OPTIONS, interceptors=interceptors)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        for binding in bindings:
            binding.add_to_server(binding.servicer, self.server)
        self._names = [binding.full_name for binding in bindings]
        reflection.enable_server_reflection(
            [*self._names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {host}:{port}")

    async def start(self) -> None:
        """Starts serving; health reports NOT_SERVING until set_ready(True)."""
        await self.set_ready(False)
        await self.server.start()

    async def set_ready(self, is_ready: bool) -> None:
        """Sets the health status of the server and of every mounted service."""
        status = (health_pb2.HealthCheckResponse.SERVING if is_ready
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", *self._names):
            await self.health.set(name, status)

    async def stop(self, grace_seconds: float) -> None:
        """Stops the server, letting in-flight RPCs run up to grace_seconds."""
        await self.server.stop(grace_seconds)


def install_drain_on_sigterm(drain: Callable[[], Awaitable[None]]) -> asyncio.Event:
    """Runs drain() once on SIGTERM or SIGINT; the returned event is set when it has finished."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    started = False

    def on_signal(signum: int) -> None:
        nonlocal started
        if started:
            return
        started = True
        log.info("received %s: draining", signal.Signals(signum).name)

        async def run() -> None:
            try:
                await drain()
            finally:
                done.set()

        loop.create_task(run())

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return done
