"""A process in a cross-process tracing test: `worker` serves one gRPC method, `router` calls it.

    python trace_peer.py worker            prints its port, serves until stdin closes
    python trace_peer.py router PORT       one span around a call to the worker, then exits
"""

from __future__ import annotations

import asyncio
import sys

import grpc

from tandem.telemetry.tracing import inject_context, server_span, setup_tracing, span

METHOD = "/tandem.test.Peer/Call"


async def serve_worker() -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with server_span("worker.Call", context.invocation_metadata(), payload=request.decode()):
            with span("worker.kv_transfer", num_bytes=1024):
                return b"ok"

    handler = grpc.method_handlers_generic_handler("tandem.test.Peer", {
        "Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


async def call_worker(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        with span("router.request", tenant="acme"):
            reply = await call(b"hello", metadata=inject_context([("x-request-id", "r-1")]), timeout=10)
    assert reply == b"ok", reply


def main() -> None:
    role = sys.argv[1]
    setup_tracing(f"tandem-{role}")
    asyncio.run(serve_worker() if role == "worker" else call_worker(int(sys.argv[2])))


if __name__ == "__main__":
    main()
