"""Receiver and sender processes for the KV transfer tests, driven over a multiprocessing pipe.

Each process runs one asyncio loop that owns its UCX context; the test process never touches UCX.
Commands are tuples (name, *args); every command gets exactly one reply.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time

UCX_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "lo", "UCX_WARN_UNUSED_ENV_VARS": "n"}
SPEC = {"num_layers": 4, "num_blocks": 48, "block_size": 4, "num_kv_heads": 2, "head_dim": 8}
REPLY_TIMEOUT_S = 30.0


class LogCapture(logging.Handler):
    """Keeps the tandem.kv log messages of a peer process for the test to inspect."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keeps the formatted message."""
        self.messages.append(record.getMessage())


def source_cache(seed: int, dtype_name: str = "float32"):
    """The sender's deterministic KV cache for a seed."""
    import torch

    from tandem.engine.kv_cache import KVCacheSpec, dtype_from_name

    spec = KVCacheSpec(**SPEC, dtype=dtype_from_name(dtype_name))
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(spec.shape, generator=generator).to(spec.dtype)


def _setup_process() -> LogCapture:
    os.environ.update(UCX_ENV)
    import torch

    torch.set_num_threads(1)
    capture = LogCapture()
    logging.getLogger("tandem.kv").addHandler(capture)
    logging.getLogger("tandem.kv").setLevel(logging.INFO)
    return capture


def receiver_main(pipe, port: int, lease_sweep_s: float) -> None:
    """Entry point of a receiver process."""
    capture = _setup_process()
    asyncio.run(_receiver(pipe, port, lease_sweep_s, capture))


async def _receiver(pipe, port: int, lease_sweep_s: float, capture: LogCapture) -> None:
    from tandem.engine.kv_cache import KVCacheSpec, allocate_kv_cache
    from tandem.kv import GrantTable, KVTransferConfig, UCXKVReceiver, make_reservation, shutdown_ucx

    cache = allocate_kv_cache(KVCacheSpec(**SPEC))
    released: list[str] = []
    grants = GrantTable(SPEC["num_layers"], SPEC["num_blocks"], on_release=lambda g: released.append(g.request_id))
    config = KVTransferConfig(sweep_interval_s=lease_sweep_s, transfer_timeout_s=10.0)
    receiver = UCXKVReceiver(cache, grants, "127.0.0.1", port, config)
    await receiver.start()
    pipe.send(("ready", receiver.address))
    loop = asyncio.get_running_loop()
    while True:
        name, *args = await loop.run_in_executor(None, pipe.recv)
        if name == "stop":
            break
        if name == "grant":
            request_id, block_ids, num_cached_blocks, lease_s = args
            grant = grants.register(request_id, block_ids, num_cached_blocks, time.time() + lease_s)
            pipe.send(make_reservation(grant, receiver.address, receiver.layout).SerializeToString())
        elif name == "wait":
            grant = grants.get(args[0])
            pipe.send("gone" if grant is None else (await grant.wait(args[1])).value)
        elif name == "state":
            grant = grants.get(args[0])
            pipe.send("gone" if grant is None else grant.state.value)
        elif name == "cache":
            pipe.send(cache.clone())
        elif name == "released":
            pipe.send(list(released))
        elif name == "logs":
            pipe.send(list(capture.messages))
    await receiver.close()
    shutdown_ucx()
    pipe.send("stopped")


def sender_main(pipe, seed: int) -> None:
    """Entry point of a sender process."""
    capture = _setup_process()
    asyncio.run(_sender(pipe, seed, capture))


async def _sender(pipe, seed: int, capture: LogCapture) -> None:
    from tandem.kv import KVTransferConfig, UCXKVSender, shutdown_ucx

    cache = source_cache(seed)
    sender = UCXKVSender(cache, KVTransferConfig(transfer_timeout_s=10.0, connect_timeout_s=5.0))
    pipe.send(("ready", os.getpid()))
    loop = asyncio.get_running_loop()
    while True:
        name, *args = await loop.run_in_executor(None, pipe.recv)
        if name == "stop":
            break
        try:
            pipe.send(("ok", await _run_sender_command(sender, name, args, capture)))
        except Exception as error:
            pipe.send(("error", type(error).__name__, str(error)))
    await sender.close()
    shutdown_ucx()
    pipe.send("stopped")


async def _run_sender_command(sender, name: str, args: list, capture: LogCapture):
    from tandem.api.v1 import worker_pb2

    if name == "transfer":
        return await _transfer(sender, worker_pb2.Reservation.FromString(args[0]), *args[1:])
    if name == "concurrent":
        transfers = [_transfer(sender, worker_pb2.Reservation.FromString(raw), src, None, True) for raw, src in args[0]]
        return await asyncio.gather(*transfers)
    if name == "stream":
        return await _stream(sender, worker_pb2.Reservation.FromString(args[0]), *args[1:])
    if name == "raw":
        return await _raw_message(*args)
    if name == "source":
        return sender.kv_cache.clone()
    if name == "logs":
        return list(capture.messages)
    if name == "die_mid_layer":
        reservation = worker_pb2.Reservation.FromString(args[0])
        await _transfer(sender, reservation, args[1], args[2], False)
        return await _post_header_without_payload(sender, reservation, layer=args[2][-1] + 1)
    raise ValueError(f"unknown sender command {name!r}")


async def _transfer(sender, reservation, src_block_ids, layers, commit: bool) -> int:
    layers = range(sender.layout.num_layers) if layers is None else layers
    sent = await asyncio.gather(*(sender.send_layer(reservation, layer, src_block_ids) for layer in layers))
    if commit:
        await sender.commit(reservation)
    return sum(sent)


async def _stream(sender, reservation, src_block_ids, num_prompt_tokens: int, chunk_tokens: int):
    """Prefill-like compute on a thread: writes each layer's KV, then reports it to a LayerStreamer."""
    import torch

    from tandem.kv import LayerStreamer

    streamer = LayerStreamer(sender, reservation, src_block_ids, num_prompt_tokens)
    block_size = sender.layout.block_size
    first_position = reservation.num_cached_blocks * block_size
    weights = torch.randn(256, 256, generator=torch.Generator().manual_seed(7))

    def compute() -> None:
        """Each chunk: every layer writes its new tokens' KV, then reports to the streamer."""
        for end in range(first_position + chunk_tokens, num_prompt_tokens + chunk_tokens, chunk_tokens):
            end = min(end, num_prompt_tokens)
            for layer in range(sender.layout.num_layers):
                activations = weights @ weights  # stands in for the layer's compute
                for position in range(max(first_position, end - chunk_tokens), end):
                    index = position // block_size - reservation.num_cached_blocks
                    block = src_block_ids[index]
                    slot = sender.kv_cache[layer, block, :, position % block_size]  # [2, heads, head_dim]
                    slot.copy_(activations[position % 256, :slot.numel()].reshape(slot.shape) + layer)
                streamer.on_layer_done(layer, end)

    thread = threading.Thread(target=compute)
    thread.start()
    result = await streamer.finish()
    thread.join()
    return result.num_bytes, result.exposed_seconds, sender.kv_cache.clone()


async def _raw_message(address: str, batch_bytes: bytes, payload_nbytes: int):
    """Opens a bare ucxx endpoint, reads the hello, sends a hand-made header batch (and payload).

    Returns the ack when the receiver answers one (malformed batches, COMMIT, ABORT), else "sent".
    """
    import numpy as np
    import ucxx

    from tandem.kv import KVTransferConfig, ensure_ucx
    from tandem.kv.reservation import parse_address
    from tandem.kv.wire import (ACK_NBYTES, ACK_TAG, HEADER_TAG, HELLO_NBYTES, HELLO_TAG, decode_ack, decode_headers,
                                payload_tag)

    ensure_ucx(KVTransferConfig())
    endpoint = await asyncio.wait_for(ucxx.create_endpoint(*parse_address(address)), 5)
    await asyncio.wait_for(endpoint.recv(np.zeros(HELLO_NBYTES, dtype=np.uint8), tag=HELLO_TAG), 5)
    await asyncio.wait_for(endpoint.send(np.frombuffer(batch_bytes, dtype=np.uint8), tag=HEADER_TAG), 5)
    if payload_nbytes:
        tag = payload_tag(decode_headers(batch_bytes)[0].seq)
        await asyncio.wait_for(endpoint.send(np.full(payload_nbytes, 7, dtype=np.uint8), tag=tag), 5)
        endpoint.abort()
        return "sent"
    buffer = np.zeros(ACK_NBYTES, dtype=np.uint8)
    await asyncio.wait_for(endpoint.recv(buffer, tag=ACK_TAG), 5)
    endpoint.abort()
    ack = decode_ack(buffer)
    return ack.status.name, ack.reason


async def _post_header_without_payload(sender, reservation, layer: int) -> str:
    """Announces a DATA run on the sender's own connection but never sends its payload."""
    import numpy as np

    from tandem.kv.wire import HEADER_TAG, Header, MessageKind, encode_headers

    connection, _ = await sender._connection(reservation.kv_address)
    header = Header(MessageKind.DATA, 10_000, reservation.token, reservation.request_id, layer,
                    reservation.block_ids[reservation.num_cached_blocks], 1, sender.layout,
                    sender.layout.bytes_per_block)
    await asyncio.wait_for(connection.endpoint.send(np.frombuffer(encode_headers([header]), dtype=np.uint8),
                                                    tag=HEADER_TAG), 5)
    return "header-posted"


class Peer:
    """A spawned receiver or sender process and its command pipe."""

    def __init__(self, target, *args) -> None:
        os.environ.update(UCX_ENV)
        context = multiprocessing.get_context("spawn")
        self.pipe, child_pipe = context.Pipe()
        self.process = context.Process(target=target, args=(child_pipe, *args), daemon=True)
        self.process.start()

    def call(self, *command, timeout: float = REPLY_TIMEOUT_S):
        """Sends a command and returns its reply."""
        self.pipe.send(command)
        return self.receive(timeout)

    def receive(self, timeout: float = REPLY_TIMEOUT_S):
        """The next reply; raises TimeoutError if the process stays silent."""
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"peer {self.process.pid} sent no reply within {timeout} s")
        return self.pipe.recv()

    def stop(self) -> None:
        """Asks the process to stop; kills it if it does not."""
        if self.process.is_alive():
            try:
                self.call("stop", timeout=10)
            except (TimeoutError, OSError, EOFError):
                pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def start_receiver(port: int = 0, lease_sweep_s: float = 0.2) -> tuple[Peer, str]:
    """A receiver process and its "host:port" address."""
    peer = Peer(receiver_main, port, lease_sweep_s)
    tag, address = peer.receive(60)
    assert tag == "ready"
    return peer, address


def start_sender(seed: int) -> Peer:
    """A sender process whose cache is source_cache(seed), once it is ready for commands."""
    peer = Peer(sender_main, seed)
    assert peer.receive(60)[0] == "ready"
    return peer
