"""KV transfer benchmark: prefill-cache blocks -> decode-cache blocks through Tandem's UCX sender
and receiver, against raw ucxx send/recv of the same bytes between the same two processes.

Section "handoff_bandwidth": for each KV size, one request's blocks (every layer) go from this
process's cache tensor into a receiver process's cache tensor. Tandem path: a LayerStreamer with
every layer reported done at t0, one message per layer run (block ids consecutive on both sides),
then the commit; t1 = commit acknowledged. Raw path: the receiver pre-posts one ucxx recv per
layer straight into the same destination region of its cache tensor, this process sends one
contiguous buffer per layer (the same source region) concurrently, and t1 = the receiver's 1-byte
"done" arrives. Both paths run alternately in the same processes and UCX context. Reported per
size: median bandwidths and their ratio tandem / raw ("ratio"), and the ratio of the best runs
("ratio_best", less sensitive to other load on a shared machine). Destination blocks are zeroed
before each Tandem run and checked against the source after the last one ("verified").

Prints one JSON object. `--quick` runs a small smoke configuration. Further sections (e.g. the
exposed transfer time of a real prefill) add a function like `handoff_bandwidth` and a key in main.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import time

DEFAULT_UCX_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "lo", "UCX_WARN_UNUSED_ENV_VARS": "n"}
DONE_TAG = 77
RAW_TAG = 78


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line parameters."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--sizes-mb", type=int, nargs="+", help="KV sizes (default 1 4 16 64 128 512; quick 1 4 16)")
    parser.add_argument("--repeats", type=int, help="timed runs per size and path (default 7; quick 2)")
    parser.add_argument("--num-layers", type=int, default=32)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--max-inflight", type=int, default=64, help="KVTransferConfig.max_inflight_messages")
    args = parser.parse_args(argv)
    if args.sizes_mb is None:
        args.sizes_mb = [1, 4, 16] if args.quick else [1, 4, 16, 64, 128, 512]
    if args.repeats is None:
        args.repeats = 2 if args.quick else 7
    if min(args.sizes_mb) <= 0 or args.repeats <= 0 or args.num_layers <= 0:
        parser.error("sizes, repeats and layers must be positive")
    return args


def cache_spec(args: argparse.Namespace, num_blocks: int):
    """The cache geometry shared by both processes."""
    from tandem.engine.kv_cache import KVCacheSpec, dtype_from_name

    return KVCacheSpec(args.num_layers, num_blocks, args.block_size, args.num_kv_heads, args.head_dim,
                       dtype_from_name(args.dtype))


def receiver_main(pipe, args: argparse.Namespace, num_blocks: int) -> None:
    """The decode-side process: a Tandem receiver and a raw ucxx listener over one cache tensor."""
    os.environ.update({k: v for k, v in DEFAULT_UCX_ENV.items() if k not in os.environ})
    import torch

    torch.set_num_threads(1)
    asyncio.run(_receiver(pipe, args, num_blocks))


async def _receiver(pipe, args: argparse.Namespace, num_blocks: int) -> None:
    import numpy as np
    import ucxx

    from tandem.engine.kv_cache import allocate_kv_cache
    from tandem.kv import GrantTable, KVTransferConfig, UCXKVReceiver, make_reservation, shutdown_ucx
    from tandem.kv.ucx_runtime import CacheRegions

    cache = allocate_kv_cache(cache_spec(args, num_blocks))
    regions = CacheRegions(cache)
    grants = GrantTable(args.num_layers, num_blocks)
    receiver = UCXKVReceiver(cache, grants, "127.0.0.1", 0, KVTransferConfig(max_inflight_messages=args.max_inflight))
    await receiver.start()
    raw_endpoints: list = []
    raw_listener = ucxx.create_listener(raw_endpoints.append, 0)
    pipe.send((receiver.address, raw_listener.port))
    loop = asyncio.get_running_loop()
    raw_task = None
    while True:
        name, *params = await loop.run_in_executor(None, pipe.recv)
        if name == "stop":
            break
        if name == "grant":
            request_id, num_used = params
            cache[:, :num_used].zero_()
            grant = grants.register(request_id, range(num_used), 0, time.time() + 600)
            pipe.send(make_reservation(grant, receiver.address, receiver.layout).SerializeToString())
        elif name == "raw":
            num_used = params[0]
            for _ in range(1000):  # the listener hands the endpoint over once its handshake is done
                if raw_endpoints:
                    break
                await asyncio.sleep(0.01)
            endpoint = raw_endpoints[-1]
            receives = [endpoint.recv(regions.run(layer, 0, num_used), tag=RAW_TAG)
                        for layer in range(args.num_layers)]
            raw_task = asyncio.ensure_future(_raw_receive(endpoint, receives, np))
            await asyncio.sleep(0.05)  # let every receive be posted before the sender starts
            pipe.send("posted")
        elif name == "digest":
            pipe.send(_digest(cache[:, :params[0]]))
    if raw_task is not None:
        await raw_task
    await receiver.close()
    shutdown_ucx()


async def _raw_receive(endpoint, receives: list, np) -> None:
    await asyncio.gather(*receives)
    await endpoint.send(np.ones(1, dtype=np.uint8), tag=DONE_TAG)


def _reply(pipe, timeout: float = 300.0):
    """The receiver's next reply; raises if it stays silent (e.g. it died)."""
    if not pipe.poll(timeout):
        raise RuntimeError(f"receiver process sent no reply within {timeout} s")
    return pipe.recv()


def _digest(tensor) -> str:
    import torch

    return hashlib.sha256(tensor.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


async def _tandem_once(sender, pipe, request_id: str, num_used: int) -> float:
    from tandem.api.v1 import worker_pb2
    from tandem.kv import LayerStreamer

    pipe.send(("grant", request_id, num_used))
    reservation = worker_pb2.Reservation.FromString(_reply(pipe))
    start = time.perf_counter()
    streamer = LayerStreamer(sender, reservation, list(range(num_used)), num_used * sender.layout.block_size)
    for layer in range(sender.layout.num_layers):
        streamer.on_layer_done(layer)
    await streamer.finish()
    return time.perf_counter() - start


async def _raw_once(endpoint, cache, pipe, num_used: int) -> float:
    import numpy as np

    from tandem.kv.ucx_runtime import CacheRegions

    regions = CacheRegions(cache)
    pipe.send(("raw", num_used))
    assert _reply(pipe) == "posted"
    start = time.perf_counter()
    sends = [endpoint.send(regions.run(layer, 0, num_used), tag=RAW_TAG) for layer in range(cache.shape[0])]
    await asyncio.wait_for(asyncio.gather(*sends), 120)
    await asyncio.wait_for(endpoint.recv(np.zeros(1, dtype=np.uint8), tag=DONE_TAG), 120)
    return time.perf_counter() - start


async def handoff_bandwidth(args: argparse.Namespace, cache, pipe, raw_address: tuple[str, int]) -> list[dict]:
    """Tandem vs raw ucxx bandwidth per KV size (median of the repeats)."""
    import ucxx

    from tandem.kv import KVTransferConfig, UCXKVSender, ensure_ucx

    config = KVTransferConfig(max_inflight_messages=args.max_inflight, transfer_timeout_s=120)
    ensure_ucx(config)
    sender = UCXKVSender(cache, config)
    raw_endpoint = await asyncio.wait_for(ucxx.create_endpoint(*raw_address), 10)
    bytes_per_block = cache_spec(args, 1).bytes_per_block_per_layer * args.num_layers
    rows = []
    for size_mb in args.sizes_mb:
        num_used = max(1, size_mb * 2**20 // bytes_per_block)
        num_bytes = num_used * bytes_per_block
        tandem_s, raw_s = [], []
        for repeat in range(args.repeats + 1):  # the first round warms up both paths
            raw = await _raw_once(raw_endpoint, cache, pipe, num_used)
            tandem = await _tandem_once(sender, pipe, f"bench-{size_mb}-{repeat}", num_used)
            if repeat:
                raw_s.append(raw)
                tandem_s.append(tandem)
        pipe.send(("digest", num_used))
        verified = _reply(pipe) == _digest(cache[:, :num_used])
        tandem_gbps = num_bytes / statistics.median(tandem_s) / 1e9
        raw_gbps = num_bytes / statistics.median(raw_s) / 1e9
        rows.append({"size_mb": num_bytes / 2**20, "num_blocks": num_used, "messages_per_transfer": args.num_layers,
                     "tandem_gbps": round(tandem_gbps, 3), "raw_gbps": round(raw_gbps, 3),
                     "ratio": round(tandem_gbps / raw_gbps, 3),
                     "ratio_best": round(min(raw_s) / min(tandem_s), 3), "verified": verified})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    await sender.close()
    raw_endpoint.abort()
    return rows


async def _run(args: argparse.Namespace) -> dict:
    import torch

    from tandem.engine.kv_cache import allocate_kv_cache

    bytes_per_block = cache_spec(args, 1).bytes_per_block_per_layer * args.num_layers
    num_blocks = max(1, max(args.sizes_mb) * 2**20 // bytes_per_block)
    context = multiprocessing.get_context("spawn")
    pipe, child_pipe = context.Pipe()
    receiver = context.Process(target=receiver_main, args=(child_pipe, args, num_blocks), daemon=True)
    receiver.start()
    cache = allocate_kv_cache(cache_spec(args, num_blocks))
    cache.view(torch.uint8).random_()  # distinct bytes everywhere, so the digest check means something
    kv_address, raw_port = _reply(pipe, 120)
    try:
        bandwidth = await handoff_bandwidth(args, cache, pipe, (kv_address.rsplit(":", 1)[0], raw_port))
    finally:
        pipe.send(("stop",))
        receiver.join(30)
    return {"handoff_bandwidth": bandwidth}


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark and prints its JSON."""
    args = parse_args(argv)
    os.environ.update({k: v for k, v in DEFAULT_UCX_ENV.items() if k not in os.environ})
    import torch

    torch.set_num_threads(1)
    started = time.time()
    results = asyncio.run(_run(args))
    from tandem.kv import shutdown_ucx

    shutdown_ucx()
    ucx_env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("UCX_")}
    parameters = {k: v for k, v in vars(args).items()}
    print(json.dumps({"benchmark": "kv_transfer", "parameters": parameters, "ucx_env": ucx_env,
                      "raw_baseline": "one contiguous buffer per layer, all layers in flight, pre-posted receives",
                      **results, "wall_seconds": round(time.time() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
