"""`tandem prefill`: a prefill worker (gRPC service, KV sender over UCX, engine)."""

from __future__ import annotations

import argparse

from prefill_worker.service import PrefillService
from tandem.api.v1 import worker_pb2_grpc
from tandem.kv.ucx_runtime import ensure_ucx, shutdown_ucx
from tandem.kv.ucx_sender import UCXKVSender
from tandem.serving.engine_loop import EngineLoop
from tandem.serving.grpc_server import ServiceBinding
from tandem.serving.worker_args import add_worker_arguments, kv_transfer_config
from tandem.serving.worker_identity import WorkerIdentity
from tandem.serving.worker_main import WorkerParts, add_ready_file_argument, run_worker_process
from tandem.serving.worker_probe import add_probe_argument, load_probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem prefill`."""
    add_worker_arguments(parser)
    add_probe_argument(parser)
    add_ready_file_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Runs the prefill worker until SIGTERM."""
    return run_worker_process(args, "prefill", lambda loop, identity: _setup(args, loop, identity))


async def _setup(args: argparse.Namespace, loop: EngineLoop, identity: WorkerIdentity) -> WorkerParts:
    config = kv_transfer_config(args)
    ensure_ucx(config)  # fail at start-up, not on the first request, if UCX cannot run here
    sender = UCXKVSender(loop.engine.kv_cache, config)
    probe = load_probe(args.probe, loop.engine.model_config.hidden_size)
    service = PrefillService(loop, sender, identity, probe=probe)
    binding = ServiceBinding(worker_pb2_grpc.add_PrefillWorkerServicer_to_server, service,
                             "tandem.v1.PrefillWorker")

    async def close() -> None:
        await sender.close()
        shutdown_ucx()  # UCX's notifier thread would otherwise keep the process alive

    return WorkerParts(binding, service, close=close)
