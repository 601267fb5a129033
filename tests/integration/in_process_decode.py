"""A decode worker served from the test's own process: the real engine, service and gRPC server.

For tests that must reach inside the worker (inject a failure, hold the engine thread, read this
process's metrics); everything else goes through worker processes started by LocalCluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from decode_worker.service import DecodeService
from tandem.api.v1 import worker_pb2_grpc
from tandem.engine.engine_config import EngineConfig
from tandem.engine.llm_engine import LLMEngine
from tandem.kv.grants import GrantTable
from tandem.serving.engine_loop import EngineLoop
from tandem.serving.grpc_server import ServiceBinding, WorkerServer
from tandem.serving.worker_identity import WorkerIdentity
from tandem.telemetry.metrics import default_metrics
from tests.integration.helpers import worker_token
from tests.integration.helpers import worker_token


@dataclass(slots=True)
class InProcessDecodeWorker:
    """A running in-process decode worker."""

    service: DecodeService
    address: str
    aio_loop: asyncio.AbstractEventLoop

    def on_engine(self, fn, *args):
        """Runs fn(*args) on the worker's engine thread and returns its result."""
        return asyncio.run_coroutine_threadsafe(self.service.loop.call(fn, *args),
                                                self.aio_loop).result(timeout=30)


@contextlib.contextmanager
def in_process_decode_worker(model_dir, service_class=DecodeService, num_blocks: int = 256):
    """Serves a decode worker on 127.0.0.1 from an asyncio loop on a background thread."""
    engine = LLMEngine(model_dir, EngineConfig(num_blocks=num_blocks, block_size=16))
    aio_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=aio_loop.run_forever, name="in-process-decode", daemon=True)
    thread.start()

    async def start():
        loop = EngineLoop(engine)
        loop.start()
        grants = GrantTable(engine.kv_cache.shape[0], engine.kv_cache.shape[1])
        identity = WorkerIdentity.of_engine(engine, "decode-in-process", "tiny")
        # No KV receiver: these tests never push KV, so the address is only echoed in reservations.
        service = service_class(loop, grants, "127.0.0.1:9", identity)
        grants.on_release = service.on_grant_released
        server = WorkerServer([ServiceBinding(worker_pb2_grpc.add_DecodeWorkerServicer_to_server,
                                              service, "tandem.v1.DecodeWorker")], "127.0.0.1", 0,
                              worker_token=worker_token())
        await server.start()
        await server.set_ready(True)
        return loop, service, server

    loop, service, server = asyncio.run_coroutine_threadsafe(start(), aio_loop).result(timeout=60)
    try:
        yield InProcessDecodeWorker(service, f"127.0.0.1:{server.port}", aio_loop)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace_seconds=0), aio_loop).result(timeout=30)
        asyncio.run_coroutine_threadsafe(loop.stop(), aio_loop).result(timeout=30)
        aio_loop.call_soon_threadsafe(aio_loop.stop)
        thread.join(timeout=30)
        aio_loop.close()


def dropped_errors(component: str, kind: str) -> float:
    """This process's tandem_dropped_errors_total for one component and kind."""
    value = default_metrics().registry.get_sample_value(
        "tandem_dropped_errors_total", {"component": component, "kind": kind})
    return value or 0.0
