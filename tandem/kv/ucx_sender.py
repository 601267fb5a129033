"""The prefill side of KV transfer: writes runs of cache blocks into a decode worker's reservation.

One connection per receiver address, opened on first use and dropped on any error; the receiver
announces an instance id in its Hello and stamps it on every ack, so a restarted receiver is
never written to through a stale endpoint (its old endpoint fails, the message is retried once on
a fresh connection, and the new instance answers for itself). Each maximal run of blocks whose
source and destination ids are both consecutive travels as ONE message straight from the cache
tensor (a numpy view on CPU, device memory on CUDA: no copy, no host staging), on its own tag.
Messages queued in the same loop turn are posted together (see `_flush`); up to
`max_inflight_messages` per connection are in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
import ucxx

from tandem.api.v1 import worker_pb2
from tandem.kv.reservation import check_reservation, parse_address, split_runs
from tandem.kv.transport import KVTransferConfig, KVTransferError, KVTransferRefused
from tandem.kv.ucx_runtime import CacheRegions, ensure_ucx
from tandem.kv.wire import (ACK_NBYTES, ACK_TAG, HEADER_TAG, HELLO_NBYTES, HELLO_TAG, MAX_HEADERS_PER_BATCH, Ack,
                            AckStatus, Header, MessageKind, WireLayout, decode_ack, decode_hello, encode_headers,
                            payload_tag)

logger = logging.getLogger("tandem.kv.sender")

# Reservations whose validation is remembered (a streamed request is sent once per layer).
_MAX_CHECKED_RESERVATIONS = 256


class _ConnectionLost(KVTransferError):
    """The connection broke under a message; the message may be retried on a fresh one."""


@dataclasses.dataclass(slots=True, eq=False)
class _Outgoing:
    header: Header
    payload: object | None
    # COMMIT and ABORT wait for an ack; DATA is never acknowledged.
    ack_buffer: np.ndarray | None
    # Set by _flush to the future of everything posted for this message.
    posted: asyncio.Future


@dataclasses.dataclass(slots=True, eq=False)
class _Connection:
    address: str
    endpoint: object
    instance_id: bytes
    window: asyncio.Semaphore
    pending_acks: dict[int, asyncio.Future] = dataclasses.field(default_factory=dict)
    outbox: list[_Outgoing] = dataclasses.field(default_factory=list)
    next_seq: int = 1
    error: BaseException | None = None

    @property
    def is_usable(self) -> bool:
        """Whether new messages may be posted on this connection."""
        return self.error is None and not self.endpoint.closed


class UCXKVSender:
    """Sends layers of `kv_cache` blocks into reservations over UCX; use from one event loop."""

    def __init__(self, kv_cache: torch.Tensor, config: KVTransferConfig | None = None) -> None:
        self.kv_cache = kv_cache
        self.layout = WireLayout.of_tensor(kv_cache)
        self.regions = CacheRegions(kv_cache)
        self.config = config or KVTransferConfig()
        self._connections: dict[str, _Connection] = {}
        self._connect_locks: dict[str, asyncio.Lock] = {}
        self._instance_ids: dict[str, bytes] = {}
        self._checked: dict[tuple, frozenset[int]] = {}

    async def send_layer(self, reservation: worker_pb2.Reservation, layer: int,
                         src_block_ids: Sequence[int], dst_block_ids: Sequence[int] | None = None) -> int:
        """Sends one layer's blocks (destination defaults to the non-cached reserved blocks); returns bytes.

        Returns once every payload has left this cache (the source blocks may then be reused);
        a refusal by the receiver is reported by `commit`.
        """
        return await (await self.post_layer(reservation, layer, src_block_ids, dst_block_ids))

    async def post_layer(self, reservation: worker_pb2.Reservation, layer: int, src_block_ids: Sequence[int],
                         dst_block_ids: Sequence[int] | None = None) -> asyncio.Future:
        """Queues one layer's runs for posting; returns a future of the bytes sent, done when they have left.

        A COMMIT queued after this returns covers these runs (the receiver answers a commit only
        after the payloads announced before it on the connection have landed), so a commit need
        not wait for the payloads to complete first.
        """
        if dst_block_ids is None:
            dst_block_ids = reservation.block_ids[reservation.num_cached_blocks:]
        runs = self._plan(reservation, layer, src_block_ids, dst_block_ids)
        queued = []
        for src_first, dst_first, num_blocks in runs:
            header = self._header(reservation, MessageKind.DATA, layer, dst_first, num_blocks)
            payload = self.regions.run(layer, src_first, num_blocks)
            connection, is_fresh = await self._connection(reservation.kv_address)
            queued.append((header, payload, connection, is_fresh, await self._enqueue(connection, header, payload)))
        num_bytes = sum(count for _, _, count in runs) * self.layout.bytes_per_block
        return asyncio.ensure_future(self._complete_layer(reservation.kv_address, queued, num_bytes))

    async def _complete_layer(self, address: str, queued: list[tuple], num_bytes: int) -> int:
        """Waits for a layer's queued runs; retries once on a fresh connection a run whose connection broke."""
        outcomes = await asyncio.gather(*(self._complete(connection, message)
                                          for _, _, connection, _, message in queued), return_exceptions=True)
        for (header, payload, _, is_fresh, _), outcome in zip(queued, outcomes):
            if isinstance(outcome, _ConnectionLost) and not is_fresh:
                logger.info("KV connection to %s lost (%s); retrying on a fresh one", address, outcome)
                await self._exchange(address, header, payload, is_retry=True)
            elif isinstance(outcome, _ConnectionLost):
                raise KVTransferError(f"KV connection to {address} lost: {outcome}") from outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        return num_bytes

    async def commit(self, reservation: worker_pb2.Reservation) -> None:
        """Asks the receiver to complete the grant; raises KVTransferRefused with its reason otherwise."""
        check_reservation(reservation, self.layout)
        await self._exchange(reservation.kv_address, self._header(reservation, MessageKind.COMMIT))

    async def abort(self, reservation: worker_pb2.Reservation, reason: str) -> None:
        """Tells the receiver this transfer will not complete, so it frees the blocks now."""
        check_reservation(reservation, self.layout)
        logger.info("aborting KV transfer of request %r: %s", reservation.request_id, reason)
        await self._exchange(reservation.kv_address, self._header(reservation, MessageKind.ABORT))

    async def close(self) -> None:
        """Drops every connection."""
        for connection in list(self._connections.values()):
            self._fail(connection, KVTransferError("sender closed"))

    def _writable_blocks(self, reservation: worker_pb2.Reservation) -> frozenset[int]:
        """The reservation's writable block ids, checked once per reservation (it is sent per layer)."""
        key = (id(reservation), reservation.request_id, reservation.token, reservation.kv_address,
               len(reservation.block_ids), reservation.num_cached_blocks)
        writable = self._checked.get(key)
        if writable is None:
            check_reservation(reservation, self.layout)
            writable = frozenset(reservation.block_ids[reservation.num_cached_blocks:])
            if len(self._checked) >= _MAX_CHECKED_RESERVATIONS:
                self._checked.pop(next(iter(self._checked)))
            self._checked[key] = writable
        return writable

    def _plan(self, reservation: worker_pb2.Reservation, layer: int, src_block_ids: Sequence[int],
              dst_block_ids: Sequence[int]) -> list[tuple[int, int, int]]:
        writable = self._writable_blocks(reservation)
        if not 0 <= layer < self.layout.num_layers:
            raise ValueError(f"layer {layer} is outside 0..{self.layout.num_layers - 1}")
        foreign = [block_id for block_id in dst_block_ids if block_id not in writable]
        if foreign:
            raise ValueError(f"destination blocks {foreign[:8]} are not writable blocks of reservation "
                             f"{reservation.request_id!r}")
        num_local_blocks = self.kv_cache.shape[1]
        outside = [block_id for block_id in src_block_ids if not 0 <= block_id < num_local_blocks]
        if outside:
            raise ValueError(f"source blocks {outside[:8]} are outside this cache's {num_local_blocks} blocks")
        return split_runs(src_block_ids, dst_block_ids)

    def _header(self, reservation: worker_pb2.Reservation, kind: MessageKind, layer: int = 0,
                dst_first: int = 0, num_blocks: int = 0) -> Header:
        return Header(kind, 0, reservation.token, reservation.request_id, layer, dst_first, num_blocks,
                      self.layout, num_blocks * self.layout.bytes_per_block)

    async def _exchange(self, address: str, header: Header, payload: object | None = None,
                        is_retry: bool = False) -> None:
        """Queues one message and waits for it (and its ack), retrying once on a fresh connection."""
        for attempt in range(1 if is_retry else 0, 2):
            connection, is_fresh = await self._connection(address)
            try:
                ack = await self._complete(connection, await self._enqueue(connection, header, payload))
                break
            except _ConnectionLost as error:
                if is_fresh or attempt:
                    raise KVTransferError(f"KV connection to {address} lost: {error}") from error
                logger.info("KV connection to %s lost (%s); retrying on a fresh one", address, error)
        if ack is not None and ack.status is not AckStatus.OK:
            raise KVTransferRefused(f"{address} refused {header.kind.name} of request {header.request_id!r}: "
                                    f"{ack.reason}")

    async def _enqueue(self, connection: _Connection, header: Header, payload: object | None) -> _Outgoing:
        """Takes a window slot and queues the message for the next flush (slot freed when it has left)."""
        await connection.window.acquire()
        if not connection.is_usable:
            connection.window.release()
            raise _ConnectionLost(f"endpoint unusable: {connection.error or 'closed by the peer'}")
        seq = connection.next_seq
        connection.next_seq += 1
        loop = asyncio.get_running_loop()
        is_control = header.kind is not MessageKind.DATA
        if is_control:
            connection.pending_acks[seq] = loop.create_future()
        message = _Outgoing(dataclasses.replace(header, seq=seq), payload,
                            np.zeros(ACK_NBYTES, dtype=np.uint8) if is_control else None, loop.create_future())
        message.posted.add_done_callback(lambda posted: self._release_when_sent(connection, posted))
        connection.outbox.append(message)
        if len(connection.outbox) == 1:
            loop.call_soon(self._flush, connection)
        return message

    @staticmethod
    def _release_when_sent(connection: _Connection, posted: asyncio.Future) -> None:
        if posted.cancelled() or posted.exception() is not None:
            connection.window.release()
        else:
            posted.result().add_done_callback(lambda _: connection.window.release())

    async def _complete(self, connection: _Connection, message: _Outgoing) -> Ack | None:
        """Waits until a queued message has left (and, for COMMIT/ABORT, its ack); fails the connection on error."""
        timeout = self.config.transfer_timeout_s
        seq = message.header.seq
        try:
            async with asyncio.timeout(timeout):
                results = await (await message.posted)
                errors = [result for result in results if isinstance(result, BaseException)]
                if errors:
                    raise errors[0]
                if message.ack_buffer is None:
                    return None
                self._dispatch_ack(connection, message.ack_buffer)
                return await asyncio.shield(connection.pending_acks[seq])
        except TimeoutError:
            self._fail(connection, KVTransferError(f"no answer within {timeout} s"))
            raise KVTransferError(f"KV message to {connection.address} timed out after {timeout} s") from None
        except _ConnectionLost:
            raise
        except Exception as error:
            self._fail(connection, error)
            raise _ConnectionLost(f"{type(error).__name__}: {error}") from error
        finally:
            future = connection.pending_acks.pop(seq, None)
            if future is not None and future.done() and not future.cancelled():
                future.exception()  # retrieved here so that an unawaited failure is not reported twice

    def _flush(self, connection: _Connection) -> None:
        """Posts every queued message: one header batch, then the payloads, then the ack receives.

        Headers travel ahead of payload bytes, so the receiver posts all the payload receives of
        a burst at once and no header queues behind bulk data on a stream transport (TCP). Each
        payload has its own tag, so the pairing never depends on posting order. Each control
        message posts one ack receive; an ack may land in any of them and is dispatched by seq.
        """
        batch, connection.outbox = connection.outbox, []
        if not connection.is_usable:
            for message in batch:
                message.posted.set_exception(_ConnectionLost(f"endpoint unusable: {connection.error}"))
            return
        endpoint = connection.endpoint
        for start in range(0, len(batch), MAX_HEADERS_PER_BATCH):
            chunk = batch[start:start + MAX_HEADERS_PER_BATCH]
            headers = np.frombuffer(encode_headers([message.header for message in chunk]), dtype=np.uint8)
            headers_sent = asyncio.ensure_future(endpoint.send(headers, tag=HEADER_TAG))
            parts = {id(message): [headers_sent] for message in chunk}
            for message in chunk:
                if message.payload is not None:
                    tag = payload_tag(message.header.seq)
                    parts[id(message)].append(asyncio.ensure_future(endpoint.send(message.payload, tag=tag)))
            for message in chunk:
                if message.ack_buffer is not None:
                    parts[id(message)].append(asyncio.ensure_future(endpoint.recv(message.ack_buffer, tag=ACK_TAG)))
                message.posted.set_result(asyncio.gather(*parts[id(message)], return_exceptions=True))

    def _dispatch_ack(self, connection: _Connection, buffer: np.ndarray) -> None:
        ack = decode_ack(buffer)
        if ack.instance_id != connection.instance_id:
            raise KVTransferError("receiver instance changed under an open connection")
        future = connection.pending_acks.get(ack.seq)
        if future is None:
            raise KVTransferError(f"ack for unknown message {ack.seq}: {ack.status.name} {ack.reason}")
        if not future.done():
            future.set_result(ack)

    async def _connection(self, address: str) -> tuple[_Connection, bool]:
        connection = self._connections.get(address)
        if connection is not None and connection.is_usable:
            return connection, False
        lock = self._connect_locks.setdefault(address, asyncio.Lock())
        async with lock:
            connection = self._connections.get(address)
            if connection is not None and connection.is_usable:
                return connection, False
            if connection is not None:
                self._fail(connection, KVTransferError("endpoint closed by the peer"))
            connection = await self._connect(address)
            self._connections[address] = connection
            return connection, True

    async def _connect(self, address: str) -> _Connection:
        host, port = parse_address(address)
        ensure_ucx(self.config)
        timeout = self.config.connect_timeout_s
        try:
            async with asyncio.timeout(timeout):
                endpoint = await ucxx.create_endpoint(host, port, connect_timeout=timeout)
                buffer = np.zeros(HELLO_NBYTES, dtype=np.uint8)
                await endpoint.recv(buffer, tag=HELLO_TAG)
            hello = decode_hello(buffer)
        except Exception as error:
            raise KVTransferError(f"could not connect to the KV receiver at {address}: "
                                  f"{type(error).__name__}: {error}") from error
        if hello.layout != self.layout:
            endpoint.abort()
            raise KVTransferError(f"KV receiver at {address} has layout {hello.layout}, this cache has {self.layout}")
        previous = self._instance_ids.get(address)
        if previous is not None and previous != hello.instance_id:
            logger.info("KV receiver at %s restarted (instance %s -> %s)", address, previous.hex(),
                        hello.instance_id.hex())
        self._instance_ids[address] = hello.instance_id
        return _Connection(address, endpoint, hello.instance_id, asyncio.Semaphore(self.config.max_inflight_messages))

    def _fail(self, connection: _Connection, error: BaseException) -> None:
        if connection.error is not None:
            return
        connection.error = error
        logger.info("dropping KV connection to %s: %s", connection.address, error)
        for future in connection.pending_acks.values():
            if not future.done():
                future.set_exception(_ConnectionLost(f"{type(error).__name__}: {error}"))
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
        connection.endpoint.abort()
