"""The life of a worker process, shared by prefill and decode: load, serve, report, drain.

Readiness (gRPC health SERVING, the ready file) comes only once the model is loaded and the KV
transport listens. SIGTERM drains: health turns NOT_SERVING, new work is refused with UNAVAILABLE,
in-flight requests get --drain-seconds to finish, then the process exits at once (see
run_worker_process).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn
from dataclasses import dataclass, field

from tandem.serving.engine_loop import EngineLoop
from tandem.serving.grpc_server import ServiceBinding, WorkerServer, install_drain_on_sigterm
from tandem.serving.ready_file import write_ready_file
from tandem.serving.worker_args import build_engine, configure_logging, resolve_model_dir, worker_id
from tandem.serving.worker_auth import worker_token_from_args
from tandem.serving.worker_identity import WorkerIdentity
from tandem.telemetry.metrics import default_metrics, start_metrics_server
from tandem.telemetry.tracing import setup_tracing

log = logging.getLogger(__name__)

METRICS_INTERVAL_S = 1.0


@dataclass(slots=True)
class WorkerParts:
    """What a role adds to the common worker: its gRPC service and its own resources."""

    binding: ServiceBinding
    service: object  # has is_accepting (settable) and num_active
    ready_fields: dict = field(default_factory=dict)
    close: Callable[[], Awaitable[None]] | None = None


async def serve_worker(args: argparse.Namespace, role: str,
                       setup: Callable[[EngineLoop, WorkerIdentity], Awaitable[WorkerParts]]) -> int:
    """Runs a worker until SIGTERM, then drains and returns the exit code."""
    configure_logging(args.log_level)
    worker_token = worker_token_from_args(args)  # before the model loads: a missing token fails fast
    tracer_provider = setup_tracing(f"tandem-{role}")
    # Resolved once: for a GGUF file this hashes the whole file to find its converted folder.
    model_dir = await asyncio.to_thread(resolve_model_dir, args.model)
    engine = await asyncio.to_thread(build_engine, args, model_dir)
    loop = EngineLoop(engine)
    loop.start()
    # The resolved folder's name, as the router derives it, so both agree for aliases and files.
    model_name = args.model_name or model_dir.name
    identity = WorkerIdentity.of_engine(engine, worker_id(args, args.grpc_port), model_name)
    parts = await setup(loop, identity)
    server = WorkerServer([parts.binding], args.host, args.grpc_port, worker_token=worker_token)
    if not args.worker_id and args.grpc_port == 0:
        identity.worker_id = worker_id(args, server.port)
    await server.start()
    metrics_port = start_metrics_server(args.metrics_port) if args.metrics_port else None
    reporter = asyncio.create_task(_report_metrics(loop, identity, role))
    await server.set_ready(True)
    write_ready_file(args.ready_file, grpc_port=server.port, metrics_port=metrics_port,
                     worker_id=identity.worker_id, **parts.ready_fields)
    log.info("%s worker %s ready on port %d (model %s)", role, identity.worker_id, server.port, model_name)

    async def drain() -> None:
        parts.service.is_accepting = False
        await server.set_ready(False)
        deadline = time.monotonic() + args.drain_seconds
        while parts.service.num_active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if parts.service.num_active:
            log.warning("%d requests still in flight after %.0fs; stopping anyway",
                        parts.service.num_active, args.drain_seconds)
        await server.stop(grace_seconds=1.0)

    await install_drain_on_sigterm(drain).wait()
    reporter.cancel()
    if parts.close is not None:
        await parts.close()
    await loop.stop()
    if tracer_provider is not None:
        tracer_provider.shutdown()  # exports the spans still batched
    log.info("%s worker %s stopped", role, identity.worker_id)
    return 0


def run_worker_process(args: argparse.Namespace, role: str,
                       setup: Callable[[EngineLoop, WorkerIdentity], Awaitable[WorkerParts]]) -> NoReturn:
    """Runs a worker as this process's only job and ends the process once it has shut down.

    By then every resource is released and the spans exported; the interpreter's own teardown
    (collecting the module graph of torch and the CUDA bindings) would only add seconds, enough
    on a busy machine for a supervisor's grace period to run out and SIGKILL the worker.
    """
    code = asyncio.run(serve_worker(args, role, setup))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_ready_file_argument(parser: argparse.ArgumentParser) -> None:
    """--ready-file: where to write the bound ports once serving (used by `tandem serve`)."""
    parser.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)


async def _report_metrics(loop: EngineLoop, identity: WorkerIdentity, role: str) -> None:
    """Publishes the engine's load as the contract's Prometheus gauges, once a second."""
    metrics = default_metrics()
    labels = {"worker": identity.worker_id, "model": identity.model}
    phase_labels = {"phase": role, **labels}
    while True:
        stats = loop.stats
        metrics.queue_requests.labels(**phase_labels).set(stats.num_waiting)
        metrics.queue_prompt_tokens.labels(**phase_labels).set(stats.num_queued_prompt_tokens)
        metrics.running_requests.labels(**phase_labels).set(stats.num_running)
        metrics.kv_blocks_used.labels(**labels).set(stats.num_blocks_used)
        metrics.kv_blocks_total.labels(**labels).set(stats.num_blocks_total)
        await asyncio.sleep(METRICS_INTERVAL_S)
