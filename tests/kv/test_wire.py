"""Header, ack and hello framing: round trips and every way a message is refused as malformed."""

from __future__ import annotations

import struct

import pytest
import torch

from tandem.kv.wire import (ACK_NBYTES, MAX_BATCH_NBYTES, MAX_HEADERS_PER_BATCH, Ack, AckStatus, Header, Hello,
                            MalformedMessage, MessageKind, WireLayout, decode_ack, decode_headers, decode_hello,
                            encode_ack, encode_headers, encode_hello, payload_tag)

LAYOUT = WireLayout(num_layers=4, block_size=16, num_kv_heads=2, head_dim=8, dtype_name="bfloat16")


def _data_header(**changes) -> Header:
    fields = dict(kind=MessageKind.DATA, seq=7, token=b"t" * 16, request_id="req-α", layer=3, first_block_id=120,
                  num_blocks=5, layout=LAYOUT, payload_nbytes=5 * LAYOUT.bytes_per_block)
    fields.update(changes)
    return Header(**fields)


def _received(batch: bytes) -> bytes:
    """What the receiver's zeroed MAX_BATCH_NBYTES buffer holds after receiving `batch`."""
    return bytes(batch) + bytes(MAX_BATCH_NBYTES - len(batch))


def test_header_batch_round_trips():
    headers = [_data_header(seq=seq, layer=seq % 4) for seq in range(1, 6)]
    headers.append(_data_header(kind=MessageKind.COMMIT, seq=6, num_blocks=0, payload_nbytes=0))
    assert decode_headers(_received(encode_headers(headers))) == headers


def test_full_batch_fits_the_receive_buffer():
    headers = [_data_header(seq=seq) for seq in range(MAX_HEADERS_PER_BATCH)]
    encoded = encode_headers(headers)
    assert len(encoded) == MAX_BATCH_NBYTES
    assert decode_headers(encoded) == headers
    with pytest.raises(ValueError, match="batch holds"):
        encode_headers(headers + headers[:1])
    with pytest.raises(ValueError, match="batch holds"):
        encode_headers([])


def test_payload_tags_are_distinct_per_message_and_from_control_tags():
    assert len({payload_tag(seq) for seq in range(1000)}) == 1000
    assert payload_tag(0) > 4


def test_layout_of_tensor_and_bytes_per_block():
    cache = torch.zeros(4, 10, 2, 16, 2, 8, dtype=torch.bfloat16)
    assert WireLayout.of_tensor(cache) == LAYOUT
    assert LAYOUT.bytes_per_block == cache[0, 0].numel() * 2
    with pytest.raises(ValueError, match="shape"):
        WireLayout.of_tensor(torch.zeros(4, 10, 16, 2, 8))
    with pytest.raises(ValueError, match="dtype"):
        WireLayout.of_tensor(torch.zeros(4, 10, 2, 16, 2, 8, dtype=torch.int8))


@pytest.mark.parametrize("mutate, reason", [
    (lambda raw: raw[:-5], "checksum"),  # short: the missing bytes read as zeros
    (lambda raw: raw[:-100], "checksum"),
    (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "checksum"),  # corrupted
    (lambda raw: raw + b"\x01", "not .* long"),  # trailing bytes beyond the announced count
    (lambda raw: b"\x00" * len(raw), "bad magic"),
    (lambda raw: b"XXXX" + raw[4:], "bad magic"),
    (lambda raw: raw[:4] + struct.pack("<H", 9) + raw[6:], "version"),
    (lambda raw: raw[:6] + struct.pack("<H", 0) + raw[8:], "announces 0"),
    (lambda raw: raw[:6] + struct.pack("<H", 65) + raw[8:], "announces 65"),
])
def test_damaged_batches_are_malformed(mutate, reason):
    raw = bytes(encode_headers([_data_header(seq=1), _data_header(seq=2)]))
    with pytest.raises(MalformedMessage, match=reason):
        decode_headers(_received(mutate(raw))[:MAX_BATCH_NBYTES])


def _resealed(header: Header, offset: int, value: bytes) -> bytes:
    """A one-header batch with a header field overwritten and a valid checksum."""
    import zlib

    raw = bytes(encode_headers([header]))
    body = raw[:8 + offset] + value + raw[8 + offset + len(value):-4]
    return _received(body + struct.pack("<I", zlib.crc32(body)))


@pytest.mark.parametrize("offset, value, reason", [
    (0, bytes([9]), "unknown message kind"),
    (1, bytes([65]), "request id length"),
    (2 + 8 + 16, b"\xff" * 4, "not UTF-8"),
])
def test_inconsistent_fields_are_malformed(offset, value, reason):
    with pytest.raises(MalformedMessage, match=reason):
        decode_headers(_resealed(_data_header(), offset, value))


def test_payload_size_must_match_the_announced_blocks():
    for header, reason in [(_data_header(payload_nbytes=LAYOUT.bytes_per_block), "payload"),
                           (_data_header(num_blocks=0, payload_nbytes=0), "at least one block"),
                           (_data_header(kind=MessageKind.ABORT), "no blocks")]:
        with pytest.raises(MalformedMessage, match=reason):
            decode_headers(_received(encode_headers([header])))


def test_encode_rejects_what_cannot_be_framed():
    with pytest.raises(ValueError, match="request id"):
        encode_headers([_data_header(request_id="x" * 65)])
    with pytest.raises(ValueError, match="token"):
        encode_headers([_data_header(token=b"short")])


def test_ack_round_trips_and_truncates_long_reasons():
    ack = Ack(seq=99, status=AckStatus.REFUSED, instance_id=b"i" * 16, reason="no " * 200)
    encoded = encode_ack(ack)
    assert len(encoded) == ACK_NBYTES
    decoded = decode_ack(encoded)
    assert (decoded.seq, decoded.status, decoded.instance_id) == (99, AckStatus.REFUSED, b"i" * 16)
    assert ack.reason.startswith(decoded.reason) and len(decoded.reason) == 240


def test_hello_round_trips_and_rejects_garbage():
    hello = Hello(instance_id=b"h" * 16, num_blocks=321, layout=LAYOUT)
    assert decode_hello(encode_hello(hello)) == hello
    with pytest.raises(MalformedMessage):
        decode_hello(bytes(len(encode_hello(hello))))
