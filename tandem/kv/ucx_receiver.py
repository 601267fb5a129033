"""The decode side of KV transfer: a UCX listener that writes payloads straight into the cache.

Per connection: send a Hello (instance id, layout), then read header batches in order. A DATA
header that its grant allows posts a receive directly into the destination view of the cache
tensor (one layer's run of consecutive blocks is one contiguous region: no staging copy); one
that it refuses has its payload drained into scratch memory so the stream stays in step, and
the refusal is logged and recorded on the grant for the commit's answer. A COMMIT or ABORT
first waits for the connection's payloads in flight, then answers with an Ack.
A malformed batch, a timeout or a vanished peer closes that connection only; the grants it was
writing stay PENDING until their writer commits or their lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import deque

import numpy as np
import torch
import ucxx
from ucxx.exceptions import UCXMessageTruncatedError

from tandem.kv.grants import GrantRefused, GrantTable
from tandem.kv.listen_scope import confine_listener
from tandem.kv.transport import KVTransferConfig
from tandem.kv.ucx_runtime import CacheRegions, ensure_ucx
from tandem.kv.wire import (ACK_TAG, HEADER_TAG, HELLO_TAG, INSTANCE_ID_NBYTES, MAX_BATCH_NBYTES, Ack, AckStatus,
                            Header, Hello, MalformedMessage, MessageKind, WireLayout, decode_headers, encode_ack,
                            encode_hello, payload_tag)

logger = logging.getLogger("tandem.kv.receiver")

# Header-batch receives kept posted per connection, so a burst costs one wake-up of the loop.
_NUM_POSTED_BATCHES = 4


class _ConnectionClosed(Exception):
    """Ends one connection's serving loop."""


class UCXKVReceiver:
    """Serves KV writes into `kv_cache` for the grants in `grants`, over UCX."""

    def __init__(self, kv_cache: torch.Tensor, grants: GrantTable, host: str, port: int = 0,
                 config: KVTransferConfig | None = None) -> None:
        self.layout = WireLayout.of_tensor(kv_cache)
        self.regions = CacheRegions(kv_cache)
        if (grants.num_layers, grants.num_blocks) != (kv_cache.shape[0], kv_cache.shape[1]):
            raise ValueError(f"grant table covers {grants.num_layers} layers x {grants.num_blocks} blocks but the "
                             f"cache has {kv_cache.shape[0]} x {kv_cache.shape[1]}")
        if not 0 <= port < 65536:
            raise ValueError(f"port must be in 0..65535, got {port}")
        self.kv_cache = kv_cache
        self.grants = grants
        self.host = host
        self.config = config or KVTransferConfig()
        self.instance_id = secrets.token_bytes(INSTANCE_ID_NBYTES)
        self._requested_port = port
        self._listener = None
        self._sweeper: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self._endpoints: set[object] = set()
        # A refused payload can be no larger than one whole layer of this cache.
        self._max_drain_nbytes = kv_cache[0].numel() * kv_cache.element_size()

    @property
    def address(self) -> str:
        """The "host:port" that senders connect to (Reservation.kv_address)."""
        if self._listener is None:
            raise RuntimeError("receiver is not started")
        return f"{self.host}:{self._listener.port}"

    async def start(self) -> None:
        """Starts the UCX listener and the lease sweeper on the running loop."""
        ensure_ucx(self.config)
        self._listener = ucxx.create_listener(self._serve, self._requested_port,
                                              connect_timeout=self.config.connect_timeout_s)
        try:
            # ucxx listens on every address; the kernel holds it to the one it advertises.
            confine_listener(self._listener.port, self.host)
        except BaseException:
            self._listener.close()
            self._listener = None
            raise
        self._sweeper = asyncio.create_task(self.grants.sweep_forever(self.config.sweep_interval_s))
        logger.info("KV receiver listening at %s (instance %s)", self.address, self.instance_id.hex())

    async def close(self) -> None:
        """Stops listening, sweeping and serving; aborts every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for endpoint in list(self._endpoints):
            endpoint.abort()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def _serve(self, endpoint) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        self._endpoints.add(endpoint)
        payloads: set[asyncio.Task] = set()
        batches: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        try:
            await self._send(endpoint, encode_hello(Hello(self.instance_id, self.grants.num_blocks, self.layout)),
                             HELLO_TAG, self.config.connect_timeout_s)
            window = asyncio.Semaphore(self.config.max_inflight_messages)
            batches.extend(self._post_batch_receive(endpoint) for _ in range(_NUM_POSTED_BATCHES))
            while True:
                headers = await self._next_batch(endpoint, *batches.popleft())
                batches.append(self._post_batch_receive(endpoint))
                for header in headers:
                    if header.kind is MessageKind.DATA:
                        await window.acquire()
                        payload = asyncio.create_task(self._receive_payload(endpoint, header, window))
                        payloads.add(payload)
                        payload.add_done_callback(lambda done: self._payload_done(done, payloads, endpoint))
                    else:
                        if payloads:  # the commit must see every run sent before it
                            await asyncio.wait(set(payloads))
                        await self._send_ack(endpoint, self._finish(header))
        except (_ConnectionClosed, asyncio.CancelledError):
            pass
        except Exception as error:
            logger.info("KV connection closed: %s: %s", type(error).__name__, error)
        finally:
            unfinished = [*payloads, *(receive for _, receive in batches)]
            for pending in unfinished:
                pending.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
            self._endpoints.discard(endpoint)
            endpoint.abort()
            self._connections.discard(task)

    @staticmethod
    def _post_batch_receive(endpoint) -> tuple[np.ndarray, asyncio.Future]:
        buffer = np.zeros(MAX_BATCH_NBYTES, dtype=np.uint8)
        return buffer, asyncio.ensure_future(endpoint.recv(buffer, tag=HEADER_TAG))

    async def _next_batch(self, endpoint, buffer: np.ndarray, receive: asyncio.Future) -> list[Header]:
        try:
            await asyncio.wait_for(receive, self.config.idle_timeout_s)
            return decode_headers(buffer)
        except (MalformedMessage, UCXMessageTruncatedError) as error:
            logger.warning("refused malformed header batch, closing the connection: %s", error)
            await self._send_ack(endpoint, Ack(0, AckStatus.MALFORMED, self.instance_id, f"malformed header: {error}"))
            raise _ConnectionClosed from error
        except TimeoutError:
            logger.info("closing KV connection idle for %.0f s", self.config.idle_timeout_s)
            raise _ConnectionClosed from None

    def _payload_done(self, payload: asyncio.Task, payloads: set[asyncio.Task], endpoint) -> None:
        payloads.discard(payload)
        if not payload.cancelled() and payload.exception() is not None:
            error = payload.exception()
            logger.info("KV payload failed, closing the connection: %s: %s", type(error).__name__, error)
            endpoint.abort()

    async def _receive_payload(self, endpoint, header: Header, window: asyncio.Semaphore) -> None:
        try:
            refusal = self._layout_refusal(header)
            grant = None
            if refusal is None:
                try:
                    grant = self.grants.begin_write(header)
                except GrantRefused as error:
                    refusal = str(error)
            else:
                self.grants.note_refusal(header, refusal)
            if grant is None:
                logger.warning("refused DATA for request %r layer %d: %s", header.request_id, header.layer, refusal)
                await self._drain(endpoint, header)
                return
            is_received = False
            try:
                target = self.regions.run(header.layer, header.first_block_id, header.num_blocks)
                async with asyncio.timeout(self.config.transfer_timeout_s):
                    await endpoint.recv(target, tag=payload_tag(header.seq))
                is_received = True
            finally:
                self.grants.end_write(grant, header, is_received)
        finally:
            window.release()

    def _layout_refusal(self, header: Header) -> str | None:
        if header.layout != self.layout:
            return f"layout mismatch: the writer has {header.layout}, this cache has {self.layout}"
        return None

    async def _drain(self, endpoint, header: Header) -> None:
        if header.payload_nbytes > self._max_drain_nbytes:
            raise _ConnectionClosed(f"refused payload of {header.payload_nbytes} bytes exceeds one layer")
        scratch = np.empty(header.payload_nbytes, dtype=np.uint8)
        async with asyncio.timeout(self.config.transfer_timeout_s):
            await endpoint.recv(scratch, tag=payload_tag(header.seq))

    def _finish(self, header: Header) -> Ack:
        refusal = self._layout_refusal(header)
        if refusal is None:
            try:
                if header.kind is MessageKind.COMMIT:
                    self.grants.commit(header)
                    logger.info("request %r committed", header.request_id)
                else:
                    self.grants.abort(header)
                    logger.info("request %r aborted by its writer", header.request_id)
                return Ack(header.seq, AckStatus.OK, self.instance_id, "")
            except GrantRefused as error:
                refusal = str(error)
        logger.warning("refused %s for request %r: %s", header.kind.name, header.request_id, refusal)
        return Ack(header.seq, AckStatus.REFUSED, self.instance_id, refusal)

    async def _send_ack(self, endpoint, ack: Ack) -> None:
        await self._send(endpoint, encode_ack(ack), ACK_TAG, self.config.transfer_timeout_s)

    @staticmethod
    async def _send(endpoint, buffer: bytearray, tag: int, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await endpoint.send(np.frombuffer(buffer, dtype=np.uint8), tag=tag)
