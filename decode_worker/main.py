"""`tandem decode`: a decode worker (gRPC service, KV receiver over UCX, engine)."""

from __future__ import annotations

import argparse
import os

from decode_worker.service import DecodeService
from tandem.api.v1 import worker_pb2_grpc
from tandem.kv.grants import GrantTable
from tandem.kv.ucx_receiver import UCXKVReceiver
from tandem.kv.ucx_runtime import shutdown_ucx
from tandem.serving.engine_loop import EngineLoop
from tandem.serving.grpc_server import ServiceBinding
from tandem.serving.worker_args import add_worker_arguments, kv_transfer_config
from tandem.serving.worker_identity import WorkerIdentity
from tandem.serving.worker_main import WorkerParts, add_ready_file_argument, run_worker_process
from tandem.serving.worker_probe import add_probe_argument, load_probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem decode`."""
    add_worker_arguments(parser)
    parser.add_argument("--kv-host", default=os.environ.get("POD_IP", "127.0.0.1"),
                        help="address prefill workers reach this worker's KV receiver at")
    parser.add_argument("--kv-port", type=int, default=13337, help="UCX listener port (0 = any)")
    add_probe_argument(parser)
    add_ready_file_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Runs the decode worker until SIGTERM."""
    return run_worker_process(args, "decode", lambda loop, identity: _setup(args, loop, identity))


async def _setup(args: argparse.Namespace, loop: EngineLoop, identity: WorkerIdentity) -> WorkerParts:
    kv_cache = loop.engine.kv_cache
    grants = GrantTable(kv_cache.shape[0], kv_cache.shape[1])
    receiver = UCXKVReceiver(kv_cache, grants, host=args.kv_host, port=args.kv_port,
                             config=kv_transfer_config(args))
    await receiver.start()
    probe = load_probe(args.probe, loop.engine.model_config.hidden_size)
    service = DecodeService(loop, grants, receiver.address, identity, probe=probe)
    grants.on_release = service.on_grant_released
    binding = ServiceBinding(worker_pb2_grpc.add_DecodeWorkerServicer_to_server, service,
                             "tandem.v1.DecodeWorker")

    async def close() -> None:
        await receiver.close()
        shutdown_ucx()  # UCX's notifier thread would otherwise keep the process alive

    return WorkerParts(binding, service, {"kv_address": receiver.address}, close)
