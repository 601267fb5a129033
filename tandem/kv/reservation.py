"""Glue between grants, the wire layout and the `Reservation` / `KVLayout` protobuf contract."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tandem.api.v1 import worker_pb2
from tandem.kv.grants import KVGrant
from tandem.kv.wire import TOKEN_NBYTES, WireLayout

DEFAULT_LEASE_S = 30.0
# Longest lease a reservation may ask for: unclaimed blocks must come back within bounded time.
MAX_LEASE_S = 600.0


def layout_to_proto(layout: WireLayout) -> worker_pb2.KVLayout:
    """The protobuf form of a cache layout."""
    return worker_pb2.KVLayout(num_layers=layout.num_layers, block_size=layout.block_size,
                               num_kv_heads=layout.num_kv_heads, head_dim=layout.head_dim,
                               dtype=layout.dtype_name)


def layout_from_proto(layout: worker_pb2.KVLayout) -> WireLayout:
    """Parses a protobuf KVLayout; raises ValueError if a field is missing or unknown."""
    if min(layout.num_layers, layout.block_size, layout.num_kv_heads, layout.head_dim) == 0:
        raise ValueError(f"reservation layout has an unset field: {layout}")
    if layout.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"reservation layout dtype {layout.dtype!r} is not float32, bfloat16 or float16")
    return WireLayout(layout.num_layers, layout.block_size, layout.num_kv_heads, layout.head_dim, layout.dtype)


def checked_lease_seconds(lease_seconds: float) -> float:
    """The lease a Reserve asked for (0: the default); raises ValueError unless in (0, MAX_LEASE_S]."""
    if lease_seconds == 0:
        return DEFAULT_LEASE_S
    if not math.isfinite(lease_seconds) or not 0 < lease_seconds <= MAX_LEASE_S:
        raise ValueError(f"lease_seconds must be a number of seconds in (0, {MAX_LEASE_S:g}] "
                         f"(0 for the default of {DEFAULT_LEASE_S:g}), got {lease_seconds}")
    return lease_seconds


def make_reservation(grant: KVGrant, kv_address: str, layout: WireLayout,
                     worker_id: str = "") -> worker_pb2.Reservation:
    """The Reservation the decode worker hands to the router for this grant."""
    return worker_pb2.Reservation(
        request_id=grant.request_id, kv_address=kv_address, block_ids=list(grant.block_ids),
        num_cached_blocks=grant.num_cached_blocks, token=grant.token,
        lease_expires_at=grant.lease_expires_at, layout=layout_to_proto(layout), worker_id=worker_id)


def check_reservation(reservation: worker_pb2.Reservation, local_layout: WireLayout) -> None:
    """Checks a reservation is well formed and matches the sender's layout; raises ValueError."""
    if not reservation.request_id:
        raise ValueError("reservation has no request_id")
    parse_address(reservation.kv_address)
    if len(reservation.token) != TOKEN_NBYTES:
        raise ValueError(f"reservation token must be {TOKEN_NBYTES} bytes, got {len(reservation.token)}")
    if reservation.num_cached_blocks > len(reservation.block_ids):
        raise ValueError(f"reservation num_cached_blocks {reservation.num_cached_blocks} exceeds its "
                         f"{len(reservation.block_ids)} blocks")
    remote_layout = layout_from_proto(reservation.layout)
    if remote_layout != local_layout:
        raise ValueError(f"KV layout mismatch: the decode worker has {remote_layout}, this cache has {local_layout}")


def parse_address(address: str) -> tuple[str, int]:
    """Splits "host:port" (IPv6 hosts in brackets); raises ValueError."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"KV address must be 'host:port', got {address!r}")
    return host, int(port)


def split_runs(src_block_ids: Sequence[int], dst_block_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """Maximal runs (src_first, dst_first, num_blocks) where source and destination ids both step by 1.

    Each run is one contiguous region on both sides for a given layer, so it travels as one message.
    """
    if len(src_block_ids) != len(dst_block_ids):
        raise ValueError(f"{len(src_block_ids)} source blocks do not pair with {len(dst_block_ids)} destination blocks")
    runs: list[tuple[int, int, int]] = []
    for src, dst in zip(src_block_ids, dst_block_ids):
        if runs:
            src_first, dst_first, count = runs[-1]
            if src == src_first + count and dst == dst_first + count:
                runs[-1] = (src_first, dst_first, count + 1)
                continue
        runs.append((int(src), int(dst), 1))
    return runs
