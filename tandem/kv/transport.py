"""The KV transfer seam: configuration, the sender/receiver protocols and their errors.

The prefill worker writes a request's KV into blocks that a decode worker reserved, through a
`KVSender`; the decode worker serves those writes with a `KVReceiver` over its `GrantTable`.
UCX (`ucx_sender.py`, `ucx_receiver.py`) is the one transport; a second one would implement
these protocols and be chosen explicitly by configuration, never as a silent fallback.
See docs/kv-transfer.md for the wire protocol and the UCX settings that matter on clusters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tandem.api.v1 import worker_pb2
from tandem.kv.wire import WireLayout


class KVTransferError(RuntimeError):
    """A KV transfer failed (connection lost, timeout, protocol violation)."""


class KVTransferRefused(KVTransferError):
    """The receiver refused a message (bad token, blocks outside the grant, layout mismatch...)."""


class KVTransportUnavailable(KVTransferError):
    """The transport (UCX) could not be initialised with the configured settings."""


@dataclass(slots=True)
class KVTransferConfig:
    """Timeouts, pipelining and UCX settings of the KV transfer layer."""

    # Seconds to open an endpoint and exchange the handshake.
    connect_timeout_s: float = 5.0
    # Seconds one message may take end to end (header, payload, acknowledgement); size it for
    # the largest run of blocks of one layer at the slowest expected bandwidth.
    transfer_timeout_s: float = 30.0
    # Seconds a receiver keeps a connection with no message before closing it.
    idle_timeout_s: float = 600.0
    # Messages (block runs) a sender keeps in flight per peer, and payload receives a receiver
    # keeps posted per connection: a whole burst of layers travels without waiting on Python.
    max_inflight_messages: int = 64
    # Seconds between lease sweeps on the receiver.
    sweep_interval_s: float = 1.0
    # UCX options passed to ucxx.init, names with or without the UCX_ prefix
    # (e.g. {"TLS": "rc,cuda_copy,cuda_ipc", "NET_DEVICES": "mlx5_0:1"}); they override env vars.
    ucx_options: dict[str, str] = field(default_factory=dict)
    # UCX transports that must be active (prefix match on `ucx_info -d` names, e.g. ("rc", "cuda_copy")):
    # with UCX_TLS=all, UCX would otherwise quietly settle for whatever it finds, TCP included.
    required_transports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("connect_timeout_s", "transfer_timeout_s", "idle_timeout_s", "sweep_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"KVTransferConfig.{name} must be positive, got {getattr(self, name)}")
        if self.max_inflight_messages < 1:
            raise ValueError(
                f"KVTransferConfig.max_inflight_messages must be >= 1, got {self.max_inflight_messages}")
        for key, value in self.ucx_options.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ValueError(f"KVTransferConfig.ucx_options must map names to strings, got {key!r}: {value!r}")

    def normalized_ucx_options(self) -> dict[str, str]:
        """UCX options keyed without the UCX_ prefix, as ucxx.init expects."""
        return {key.removeprefix("UCX_"): value for key, value in self.ucx_options.items()}


@dataclass(slots=True, frozen=True)
class TransferResult:
    """What a finished streamed transfer reports back to the prefill worker."""

    num_bytes: int
    # Seconds from the last layer's compute finishing to the commit being acknowledged.
    exposed_seconds: float


class KVSender(Protocol):
    """Writes a request's KV blocks into a decode worker's reservation."""

    kv_cache: torch.Tensor  # [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim]
    layout: WireLayout

    async def post_layer(self, reservation: worker_pb2.Reservation, layer: int, src_block_ids: Sequence[int],
                         dst_block_ids: Sequence[int] | None = None) -> asyncio.Future:
        """Queues one layer's blocks; returns a future of the bytes sent, done once they have left."""
        ...

    async def send_layer(self, reservation: worker_pb2.Reservation, layer: int,
                         src_block_ids: Sequence[int], dst_block_ids: Sequence[int] | None = None) -> int:
        """Sends one layer's blocks; returns the bytes sent."""
        ...

    async def commit(self, reservation: worker_pb2.Reservation) -> None:
        """Tells the receiver every layer was sent; raises KVTransferRefused if it is incomplete."""
        ...

    async def abort(self, reservation: worker_pb2.Reservation, reason: str) -> None:
        """Tells the receiver the transfer will not complete."""
        ...

    async def close(self) -> None:
        """Closes every connection."""
        ...


class KVReceiver(Protocol):
    """Accepts KV writes into this worker's cache for the grants in its table."""

    layout: WireLayout

    @property
    def address(self) -> str:
        """The "host:port" that senders connect to (Reservation.kv_address)."""
        ...

    async def start(self) -> None:
        """Starts listening and sweeping expired leases."""
        ...

    async def close(self) -> None:
        """Stops listening and drops every connection."""
        ...
