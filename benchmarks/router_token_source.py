"""A synthetic decode worker for the router benchmark: serves DecodeWorker and streams tokens at once.

It stands in for an infinitely fast engine so that the router, not the worker, is what saturates:
Decode streams `max_tokens` tokens of a fixed English text (tokenized with the model's own
tokenizer, so the router detokenizes real text) in chunks of `--tokens-per-chunk`, shaped like the
real worker's chunks (one section per token, finish reason on the last chunk). Chunks are
serialized once at start-up and sent as bytes, so this process spends as little CPU per token as
gRPC allows. GetLoad reports the model folder's name, context and KV layout, as a real worker does.

    python benchmarks/router_token_source.py --model DIR --ready-file F [--tokens-per-chunk N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import grpc

from tandem.api.v1 import inference_pb2, worker_pb2
from tandem.engine.tokenizer import Tokenizer
from router_setup import serve_until_signalled

SERVICE = "tandem.v1.DecodeWorker"
ANSWER = inference_pb2.TOKEN_SECTION_ANSWER
TEXT = ("The router relays tokens from decode workers to clients. Each token becomes text, and the "
        "text goes back to the client as soon as it is whole. A fast router adds little time to "
        "each token, even with many streams open at once. ")
# Far more than any benchmark request asks for, so that streams never run out of tokens.
MAX_CONTEXT = 1 << 20


class TokenSource:
    """DecodeWorker handlers that stream pre-serialized chunks."""

    def __init__(self, model_dir: Path, tokens_per_chunk: int, worker_id: str) -> None:
        tokenizer = Tokenizer.from_model_dir(model_dir)
        config = json.loads((model_dir / "config.json").read_text())
        self.token_ids = tokenizer.encode(TEXT * 4, add_special_tokens=False)
        self.tokens_per_chunk = tokens_per_chunk
        heads = config["num_attention_heads"]
        self.load = worker_pb2.WorkerLoad(
            worker_id=worker_id, role=worker_pb2.WORKER_ROLE_DECODE, model=model_dir.name,
            accepting=True, num_kv_blocks_total=1 << 16, max_context=MAX_CONTEXT,
            layout=worker_pb2.KVLayout(num_layers=config["num_hidden_layers"], block_size=16,
                                       num_kv_heads=config.get("num_key_value_heads", heads),
                                       head_dim=config["hidden_size"] // heads, dtype="float32"))
        self._chunks: dict[int, bytes] = {}

    def _ids(self, offset: int, num_tokens: int) -> list[int]:
        return [self.token_ids[(offset + i) % len(self.token_ids)] for i in range(num_tokens)]

    def _chunk(self, offset: int) -> bytes:
        """The serialized body (no request id) of a full chunk starting at offset (cached)."""
        offset %= len(self.token_ids)
        cached = self._chunks.get(offset)
        if cached is None:
            cached = worker_pb2.DecodeChunk(
                token_ids=self._ids(offset, self.tokens_per_chunk),
                sections=[ANSWER] * self.tokens_per_chunk).SerializeToString()
            self._chunks[offset] = cached
        return cached

    async def decode(self, request: worker_pb2.DecodeRequest, context):
        """Streams request.budget.max_tokens tokens; the last chunk says LENGTH."""
        if not request.colocated:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                "the token source serves colocated requests only (no KV transfer)")
        # Protobuf messages concatenate: the request id is serialized once per stream, not per chunk.
        header = worker_pb2.DecodeChunk(request_id=request.request_id).SerializeToString()
        num_left = max(1, request.budget.max_tokens)
        offset = 0
        while num_left > self.tokens_per_chunk:
            yield header + self._chunk(offset)
            offset += self.tokens_per_chunk
            num_left -= self.tokens_per_chunk
        last = worker_pb2.DecodeChunk(
            token_ids=self._ids(offset, num_left), sections=[ANSWER] * num_left,
            finish_reason=inference_pb2.FINISH_REASON_LENGTH, finish_detail="length")
        yield header + last.SerializeToString()

    async def reserve(self, request, context):
        """Refuses: no KV transfer here."""
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            "the token source serves colocated requests only (no Reserve)")

    async def cancel(self, request: worker_pb2.CancelRequest, context) -> worker_pb2.CancelResponse:
        """Nothing to free: streams end when the client goes."""
        return worker_pb2.CancelResponse(found=False)

    async def get_load(self, request, context) -> worker_pb2.WorkerLoad:
        """A constant, idle, accepting load report."""
        return self.load


def _handler(source: TokenSource) -> grpc.GenericRpcHandler:
    identity = bytes  # chunks are already serialized
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Decode": grpc.unary_stream_rpc_method_handler(
            source.decode, request_deserializer=worker_pb2.DecodeRequest.FromString,
            response_serializer=identity),
        "Reserve": grpc.unary_unary_rpc_method_handler(
            source.reserve, request_deserializer=worker_pb2.ReserveRequest.FromString,
            response_serializer=worker_pb2.Reservation.SerializeToString),
        "Cancel": grpc.unary_unary_rpc_method_handler(
            source.cancel, request_deserializer=worker_pb2.CancelRequest.FromString,
            response_serializer=worker_pb2.CancelResponse.SerializeToString),
        "GetLoad": grpc.unary_unary_rpc_method_handler(
            source.get_load, request_deserializer=worker_pb2.GetLoadRequest.FromString,
            response_serializer=worker_pb2.WorkerLoad.SerializeToString),
    })


async def serve(args: argparse.Namespace) -> None:
    """Serves until SIGTERM; writes the bound port to the ready file."""
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    source = TokenSource(Path(args.model), args.tokens_per_chunk, f"token-source-{port}")
    server.add_generic_rpc_handlers((_handler(source),))
    await serve_until_signalled(server, port, args.ready_file)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder (tokenizer, config.json)")
    parser.add_argument("--tokens-per-chunk", type=int, default=1)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    if args.tokens_per_chunk < 1:
        raise SystemExit(f"--tokens-per-chunk must be >= 1, got {args.tokens_per_chunk}")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
