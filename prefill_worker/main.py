"""`tandem prefill`: a prefill worker (gRPC service, KV sender over UCX, engine)."""

from __future__ import annotations

import argparse
import asyncio

from prefill_worker.service import PrefillService
from tandem.api.v1 import worker_pb2_grpc
from tandem.kv.ucx_runtime import ensure_ucx, shutdown_ucx
from tandem.kv.ucx_sender import UCXKVSender
from tandem.serving.engine_loop import EngineLoop
from tandem.serving.grpc_server import ServiceBinding
from tandem.serving.worker_args import add_worker_arguments, kv_transfer_config
from tandem.serving.worker_identity import WorkerIdentity
from tandem.serving.worker_main import WorkerParts, add_ready_file_argument, serve_worker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tandem prefill`."""
    add_worker_arguments(parser)
    parser.add_argument("--probe", default=None,
                        help="folder of a trained difficulty probe head (tandem difficulty train)")
    add_ready_file_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Runs the prefill worker until SIGTERM."""
    return asyncio.run(serve_worker(args, "prefill", lambda loop, identity: _setup(args, loop, identity)))


async def _setup(args: argparse.Namespace, loop: EngineLoop, identity: WorkerIdentity) -> WorkerParts:
    config = kv_transfer_config(args)
    ensure_ucx(config)  # fail at start-up, not on the first request, if UCX cannot run here
    sender = UCXKVSender(loop.engine.kv_cache, config)
    probe = _load_probe(args.probe)
    hidden_size = loop.engine.model_config.hidden_size
    if probe is not None and probe.hidden_size != hidden_size:
        raise SystemExit(f"--probe {args.probe} reads hidden states of size {probe.hidden_size}, but "
                         f"the model's hidden size is {hidden_size}: train it on this model")
    service = PrefillService(loop, sender, identity, probe=probe)
    binding = ServiceBinding(worker_pb2_grpc.add_PrefillWorkerServicer_to_server, service,
                             "tandem.v1.PrefillWorker")

    async def close() -> None:
        await sender.close()
        shutdown_ucx()  # UCX's notifier thread would otherwise keep the process alive

    return WorkerParts(binding, service, close=close)


def _load_probe(path: str | None):
    if path is None:
        return None
    from tandem.difficulty.probe import ProbeHead

    return ProbeHead.load(path)
