"""KV cache transfer from prefill to decode workers over UCX (see docs/kv-transfer.md).

Decode side: a `GrantTable` plus a `UCXKVReceiver` serving writes into the cache tensor.
Prefill side: a `UCXKVSender` and, per request, a `LayerStreamer` fed by the engine's layer hook.
"""

from tandem.kv.grants import GrantRefused, GrantState, GrantTable, KVGrant
from tandem.kv.reservation import layout_from_proto, layout_to_proto, make_reservation
from tandem.kv.streamer import LayerStreamer
from tandem.kv.transport import (KVReceiver, KVSender, KVTransferConfig, KVTransferError, KVTransferRefused,
                                 KVTransportUnavailable, TransferResult)
from tandem.kv.ucx_receiver import UCXKVReceiver
from tandem.kv.ucx_runtime import ensure_ucx, shutdown_ucx
from tandem.kv.ucx_sender import UCXKVSender
from tandem.kv.wire import WireLayout

__all__ = [
    "GrantRefused", "GrantState", "GrantTable", "KVGrant", "KVReceiver", "KVSender", "KVTransferConfig",
    "KVTransferError", "KVTransferRefused", "KVTransportUnavailable", "LayerStreamer", "TransferResult",
    "UCXKVReceiver", "UCXKVSender", "WireLayout", "ensure_ucx", "layout_from_proto", "layout_to_proto",
    "make_reservation", "shutdown_ucx",
]
