"""The least a Python grpc.aio relay does per token: the floor the router benchmark compares against.

Serves `tandem.v1.Inference/Generate` by opening a colocated `DecodeWorker/Decode` stream on one
decode worker (round robin) and answering each chunk with a GenerateResponse that carries its token
ids, then a usage message: the same gRPC calls and protobuf messages as the router, without
detokenization, budgets, tracing, metrics or routing. The router's CPU per token minus this
relay's is what the router's own code costs.

    python benchmarks/router_bare_relay.py --decode-workers host:port,... --ready-file F
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import grpc

from tandem.api.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc
from router_setup import serve_until_signalled


class BareRelay(inference_pb2_grpc.InferenceServicer):
    """Relays Decode chunks as GenerateResponses, one for one."""

    def __init__(self, decode_addresses: list[str]) -> None:
        stubs = [worker_pb2_grpc.DecodeWorkerStub(grpc.aio.insecure_channel(a)) for a in decode_addresses]
        self._next_stub = itertools.cycle(stubs)
        self._request_ids = itertools.count()

    async def Generate(self, request: inference_pb2.GenerateRequest, context):
        """Streams the chosen worker's tokens back, then the usage."""
        request_id = f"bare-{next(self._request_ids)}"
        call = next(self._next_stub).Decode(worker_pb2.DecodeRequest(
            request_id=request_id, prompt_token_ids=request.tokens.token_ids, colocated=True,
            sampling=request.sampling, budget=worker_pb2.DecodeBudget(max_tokens=request.budget.max_tokens)))
        num_tokens = 0
        async for chunk in call:
            num_tokens += len(chunk.token_ids)
            yield inference_pb2.GenerateResponse(request_id=request_id, token_ids=chunk.token_ids,
                                                 section=inference_pb2.TOKEN_SECTION_ANSWER,
                                                 finish_reason=chunk.finish_reason)
        yield inference_pb2.GenerateResponse(request_id=request_id, usage=inference_pb2.Usage(
            prompt_tokens=len(request.tokens.token_ids), completion_tokens=num_tokens))


async def serve(args: argparse.Namespace) -> None:
    """Serves until SIGTERM; writes the bound port to the ready file."""
    server = grpc.aio.server()
    inference_pb2_grpc.add_InferenceServicer_to_server(
        BareRelay([a for a in args.decode_workers.split(",") if a]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await serve_until_signalled(server, port, args.ready_file)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decode-workers", required=True, help="host:port,host:port")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    if not args.decode_workers.strip(","):
        raise SystemExit("--decode-workers needs at least one host:port")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
