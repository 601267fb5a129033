"""KV transfer between real processes on loopback, UCX over TCP.

A receiver process owns a zeroed cache and a grant table; sender processes own deterministic
source caches. The test process only drives them through pipes and compares tensors.
"""

from __future__ import annotations

import time

import pytest
import torch

from tandem.api.v1 import worker_pb2
from tandem.kv.wire import Header, MessageKind, WireLayout, encode_headers
from tests.kv.peers import SPEC, Peer, source_cache, start_receiver, start_sender

pytestmark = pytest.mark.slow

SEED = 11


@pytest.fixture(scope="module")
def peers():
    """One receiver and one sender process shared by the tests that keep them alive."""
    receiver, address = start_receiver()
    sender = start_sender(SEED)
    yield receiver, address, sender
    _stop_all(sender, receiver)


def _stop_all(*stopped: Peer) -> None:
    for peer in stopped:
        if peer.process.is_alive():
            peer.pipe.send(("stop",))
    for peer in stopped:
        peer.process.join(10)
        if peer.process.is_alive():
            peer.process.kill()


def _grant(receiver: Peer, request_id: str, block_ids: list[int], num_cached: int = 0,
           lease_s: float = 30.0) -> bytes:
    return receiver.call("grant", request_id, block_ids, num_cached, lease_s)


def _assert_blocks_equal(dst_cache: torch.Tensor, src_cache: torch.Tensor, dst_ids: list[int], src_ids: list[int]):
    for dst_id, src_id in zip(dst_ids, src_ids):
        assert torch.equal(dst_cache[:, dst_id], src_cache[:, src_id]), f"block {dst_id} != source {src_id}"


def _assert_zero(cache: torch.Tensor, block_ids) -> None:
    for block_id in block_ids:
        assert not cache[:, block_id].any(), f"block {block_id} was written"


def test_round_trip_scattered_blocks_skips_cached_prefix(peers):
    receiver, _, sender = peers
    block_ids = [5, 6, 7, 20, 3, 4, 30, 31, 32]  # first two are the decode side's cached prefix
    src_ids = [10, 11, 12, 13, 1, 2, 40]
    reservation = _grant(receiver, "round-trip", block_ids, num_cached=2)

    status, num_bytes = sender.call("transfer", reservation, src_ids, None, True)

    assert status == "ok"
    assert num_bytes == SPEC["num_layers"] * len(src_ids) * WireLayout.of_tensor(source_cache(SEED)).bytes_per_block
    assert receiver.call("wait", "round-trip", 5) == "complete"
    cache = receiver.call("cache")
    _assert_blocks_equal(cache, source_cache(SEED), block_ids[2:], src_ids)
    _assert_zero(cache, [b for b in range(SPEC["num_blocks"]) if b not in block_ids[2:]])


def test_refused_writes_leave_destination_untouched_and_receiver_serving(peers):
    receiver, address, sender = peers
    reservation = worker_pb2.Reservation.FromString(_grant(receiver, "guarded", [40, 41, 42]))
    before = receiver.call("cache")

    wrong_token = _copy(reservation)
    wrong_token.token = bytes(16)
    _assert_refused(sender.call("transfer", wrong_token.SerializeToString(), [0, 1, 2], None, True),
                    "token does not match")

    outside = _copy(reservation)
    outside.block_ids.append(43)  # forged: block 43 was never granted
    _assert_refused(sender.call("transfer", outside.SerializeToString(), [0, 1, 2, 3], [0], True),
                    "blocks [43] of run 40+4 are not writable")

    mismatched = Header(MessageKind.DATA, 1, reservation.token, "guarded", 0, 40, 1,
                        WireLayout(SPEC["num_layers"], 8, 2, 8, "float32"), 2 * 8 * 2 * 8 * 4)
    assert sender.call("raw", address, bytes(encode_headers([mismatched])), mismatched.payload_nbytes) == (
        "ok", "sent")

    malformed = bytes(encode_headers([_header(reservation, layer=0)]))[:-5]
    status, (ack_status, reason) = sender.call("raw", address, malformed, 0)
    assert (status, ack_status, "checksum" in reason) == ("ok", "MALFORMED", True)

    assert torch.equal(receiver.call("cache"), before)
    logs = "\n".join(receiver.call("logs"))
    for reason in ("token does not match", "not writable", "malformed header batch", "layout mismatch"):
        assert reason in logs

    assert sender.call("transfer", reservation.SerializeToString(), [0, 1, 2], None, True)[0] == "ok"
    assert receiver.call("wait", "guarded", 5) == "complete"
    _assert_blocks_equal(receiver.call("cache"), source_cache(SEED), [40, 41, 42], [0, 1, 2])

    _assert_refused(sender.call("transfer", reservation.SerializeToString(), [5, 6, 7], [0], True),
                    "complete; its token no longer allows writes")
    _assert_blocks_equal(receiver.call("cache"), source_cache(SEED), [40, 41, 42], [0, 1, 2])


def _copy(reservation: worker_pb2.Reservation) -> worker_pb2.Reservation:
    copy = worker_pb2.Reservation()
    copy.CopyFrom(reservation)
    return copy


def test_concurrent_requests_to_one_receiver_interleave_correctly(peers):
    receiver, _, sender = peers
    # Destination blocks of the four requests interleave in the cache; sources overlap freely.
    plans = {f"concurrent-{i}": ([8 + i, 12 + i, 16 + i, 24 + 2 * i, 25 + 2 * i], [i, i + 1, i + 2, 30, 31 - i])
             for i in range(4)}
    reservations = [(_grant(receiver, request_id, dst), src) for request_id, (dst, src) in plans.items()]

    status, sent = sender.call("concurrent", reservations)

    assert status == "ok" and len(sent) == 4
    cache = receiver.call("cache")
    for request_id, (dst, src) in plans.items():
        assert receiver.call("wait", request_id, 5) == "complete"
        _assert_blocks_equal(cache, source_cache(SEED), dst, src)


def test_layer_streamer_sends_while_a_compute_thread_runs(peers):
    receiver, _, sender = peers
    block_ids = [33, 34, 35, 36, 37, 38]
    num_cached = 1
    src_ids = [20, 21, 22, 23, 24]
    num_prompt_tokens = 22  # the last block is partly filled; chunks of 7 tokens split blocks too
    reservation = _grant(receiver, "streamed", block_ids, num_cached=num_cached)

    status, (num_bytes, exposed_seconds, source) = sender.call("stream", reservation, src_ids, num_prompt_tokens, 7)

    assert status == "ok" and exposed_seconds >= 0
    assert num_bytes == SPEC["num_layers"] * len(src_ids) * WireLayout.of_tensor(source).bytes_per_block
    assert receiver.call("wait", "streamed", 5) == "complete"
    _assert_blocks_equal(receiver.call("cache"), source, block_ids[num_cached:], src_ids)
    assert not receiver.call("cache")[:, block_ids[0]].any()


def test_sender_killed_mid_transfer_leaves_grant_to_lease_expiry(peers):
    receiver, _, _ = peers
    doomed = start_sender(SEED)
    try:
        reservation = _grant(receiver, "orphan", [44, 45], lease_s=4.0)
        # Layers 0-1 arrive, then the header of a layer-2 run whose payload never comes.
        assert doomed.call("die_mid_layer", reservation, [0, 1], [0, 1]) == ("ok", "header-posted")
        assert receiver.call("state", "orphan") == "pending"
        doomed.process.kill()
        doomed.process.join(5)

        assert receiver.call("wait", "orphan", 10) == "expired"
        assert _eventually(lambda: "orphan" in receiver.call("released"))
    finally:
        _stop_all(doomed)
    reservation = _grant(receiver, "after-orphan", [44, 45])
    assert peers[2].call("transfer", reservation, [3, 4], None, True)[0] == "ok"
    assert receiver.call("wait", "after-orphan", 5) == "complete"


def test_sender_reconnects_to_a_receiver_restarted_on_the_same_port(peers):
    _, _, sender = peers
    first, address = start_receiver()
    port = int(address.rsplit(":", 1)[1])
    try:
        assert sender.call("transfer", _grant(first, "before-restart", [1, 2]), [7, 8], None, True)[0] == "ok"
        first.process.kill()
        first.process.join(5)
        second, second_address = start_receiver(port)
        try:
            assert second_address == address
            reservation = _grant(second, "after-restart", [3, 4])
            assert sender.call("transfer", reservation, [9, 10], None, True)[0] == "ok"
            assert second.call("wait", "after-restart", 5) == "complete"
            _assert_blocks_equal(second.call("cache"), source_cache(SEED), [3, 4], [9, 10])
        finally:
            _stop_all(second)
    finally:
        _stop_all(first)
    assert "restarted" in "\n".join(sender.call("logs")[1])


def _header(reservation: worker_pb2.Reservation, layer: int) -> Header:
    layout = WireLayout.of_tensor(source_cache(SEED))
    return Header(MessageKind.DATA, 1, reservation.token, reservation.request_id, layer,
                  reservation.block_ids[0], 1, layout, layout.bytes_per_block)


def _assert_refused(reply, fragment: str) -> None:
    assert reply[0] == "error" and reply[1] == "KVTransferRefused", reply
    assert fragment in reply[2], reply


def _eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
