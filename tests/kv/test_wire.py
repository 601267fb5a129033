"""Header, ack and hello framing: round trips and every way a message is refused as malformed."""

from __future__ import annotations

import struct

import pytest
import torch

from tandem.kv.wire import (ACK_NBYTES, HEADER_NBYTES, Ack, AckStatus, Header, Hello, MalformedMessage, MessageKind,
                            WireLayout, decode_ack, decode_header, decode_hello, encode_ack, encode_header,
                            encode_hello)

LAYOUT = WireLayout(num_layers=4, block_size=16, num_kv_heads=2, head_dim=8, dtype_name="bfloat16")


def _data_header(**changes) -> Header:
    fields = dict(kind=MessageKind.DATA, seq=7, token=b"t" * 16, request_id="req-α", layer=3, first_block_id=120,
                  num_blocks=5, layout=LAYOUT, payload_nbytes=5 * LAYOUT.bytes_per_block)
    fields.update(changes)
    return Header(**fields)


def test_header_round_trips():
    header = _data_header()
    encoded = encode_header(header)
    assert len(encoded) == HEADER_NBYTES
    assert decode_header(encoded) == header


def test_commit_header_round_trips_without_payload():
    header = _data_header(kind=MessageKind.COMMIT, num_blocks=0, payload_nbytes=0)
    assert decode_header(encode_header(header)) == header


def test_layout_of_tensor_and_bytes_per_block():
    cache = torch.zeros(4, 10, 2, 16, 2, 8, dtype=torch.bfloat16)
    assert WireLayout.of_tensor(cache) == LAYOUT
    assert LAYOUT.bytes_per_block == cache[0, 0].numel() * 2
    with pytest.raises(ValueError, match="shape"):
        WireLayout.of_tensor(torch.zeros(4, 10, 16, 2, 8))
    with pytest.raises(ValueError, match="dtype"):
        WireLayout.of_tensor(torch.zeros(4, 10, 2, 16, 2, 8, dtype=torch.int8))


@pytest.mark.parametrize("mutate, reason", [
    (lambda raw: raw[:-1], "must be"),  # short
    (lambda raw: raw + b"\x00", "must be"),  # long
    (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "checksum"),  # corrupted
    (lambda raw: b"\x00" * len(raw), "checksum"),
])
def test_damaged_headers_are_malformed(mutate, reason):
    raw = bytes(encode_header(_data_header()))
    with pytest.raises(MalformedMessage, match=reason):
        decode_header(mutate(raw))


def _resealed(raw: bytes, offset: int, value: bytes) -> bytes:
    """A header with one field overwritten and a valid checksum, to reach the semantic checks."""
    import zlib

    body = raw[:offset] + value + raw[offset + len(value):-4]
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("offset, value, reason", [
    (0, b"XXXX", "bad magic"),
    (4, struct.pack("<H", 9), "version"),
    (6, bytes([9]), "unknown message kind"),
    (7, bytes([65]), "request id length"),
])
def test_inconsistent_fields_are_malformed(offset, value, reason):
    raw = bytes(encode_header(_data_header()))
    with pytest.raises(MalformedMessage, match=reason):
        decode_header(_resealed(raw, offset, value))


def test_payload_size_must_match_the_announced_blocks():
    with pytest.raises(MalformedMessage, match="payload"):
        decode_header(encode_header(_data_header(payload_nbytes=LAYOUT.bytes_per_block)))
    with pytest.raises(MalformedMessage, match="at least one block"):
        decode_header(encode_header(_data_header(num_blocks=0, payload_nbytes=0)))
    with pytest.raises(MalformedMessage, match="no blocks"):
        decode_header(encode_header(_data_header(kind=MessageKind.ABORT)))


def test_encode_rejects_what_cannot_be_framed():
    with pytest.raises(ValueError, match="request id"):
        encode_header(_data_header(request_id="x" * 65))
    with pytest.raises(ValueError, match="token"):
        encode_header(_data_header(token=b"short"))


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
