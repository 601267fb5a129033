"""KV transfer framing: batches of fixed-size headers, acknowledgements and the connection hello.

A sender posts its queued messages together: ONE header batch (on HEADER_TAG) holding up to
MAX_HEADERS_PER_BATCH fixed-size headers, then, for each DATA header, one payload on
payload_tag(seq) that is the bytes of a run of consecutive blocks of one layer, straight from
the sender's cache tensor into the receiver's. Batching keeps the receiver at one header receive
per burst instead of one per run (each UCX operation costs far more in Python than a header's
bytes). DATA is never acknowledged; COMMIT and ABORT each get one Ack (on ACK_TAG) carrying the
header's sequence number, and a refused DATA is reported by the commit's answer. A CRC closes
each batch, ack and hello so that a short, long or corrupted message is refused as malformed.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import torch

MAGIC = b"TKVX"
VERSION = 1
TOKEN_NBYTES = 16
INSTANCE_ID_NBYTES = 16
MAX_REQUEST_ID_NBYTES = 64
MAX_REASON_NBYTES = 240

# UCX tags (hashed with each endpoint's own tag by ucxx, so connections never cross-match).
HELLO_TAG = 1
HEADER_TAG = 2
ACK_TAG = 4
# Each payload travels on its own tag, derived from its header's sequence number, so a payload
# can only ever land in the receive its own header posted, whatever the posting order.
_PAYLOAD_TAG_BASE = 1 << 40

DTYPE_CODES = {"float32": 1, "bfloat16": 2, "float16": 3}
DTYPE_NBYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}

MAX_HEADERS_PER_BATCH = 64

# magic, version, number of headers in the batch.
_BATCH = struct.Struct("<4sHH")
# kind, request_id length, seq, token, request_id, layer, first block id, num_blocks,
# layout (num_layers, block_size, num_kv_heads, head_dim, dtype code), payload bytes.
_HEADER = struct.Struct("<BBQ16s64sIIIIIIIB3xQ")
# magic, seq, status, reason length, instance id, reason.
_ACK = struct.Struct("<4sQBxH16s240s")
# magic, version, instance id, layout (num_layers, num_blocks, block_size, heads, head_dim, dtype).
_HELLO = struct.Struct("<4sH2x16sIIIIIB3x")
_CRC = struct.Struct("<I")

MAX_BATCH_NBYTES = _BATCH.size + MAX_HEADERS_PER_BATCH * _HEADER.size + _CRC.size
ACK_NBYTES = _ACK.size + _CRC.size
HELLO_NBYTES = _HELLO.size + _CRC.size


class MessageKind(IntEnum):
    """What a header announces."""

    DATA = 1
    COMMIT = 2
    ABORT = 3


class AckStatus(IntEnum):
    """The receiver's answer to one header."""

    OK = 0
    REFUSED = 1
    MALFORMED = 2


class MalformedMessage(ValueError):
    """A fixed-size message failed to parse or is inconsistent with itself."""


@dataclass(slots=True, frozen=True)
class WireLayout:
    """The cache geometry both sides must share to exchange blocks."""

    num_layers: int
    block_size: int
    num_kv_heads: int
    head_dim: int
    dtype_name: str

    @classmethod
    def of_tensor(cls, kv_cache: torch.Tensor) -> WireLayout:
        """The layout of a cache tensor [num_layers, num_blocks, 2, block_size, heads, head_dim]."""
        if kv_cache.dim() != 6 or kv_cache.shape[2] != 2:
            raise ValueError(f"KV cache must have shape [layers, blocks, 2, block_size, heads, head_dim], "
                             f"got {tuple(kv_cache.shape)}")
        dtype_name = str(kv_cache.dtype).removeprefix("torch.")
        if dtype_name not in DTYPE_CODES:
            raise ValueError(f"unsupported KV cache dtype {dtype_name!r}; expected one of {sorted(DTYPE_CODES)}")
        num_layers, _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
        return cls(num_layers, block_size, num_kv_heads, head_dim, dtype_name)

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one block of one layer (K and V)."""
        return 2 * self.block_size * self.num_kv_heads * self.head_dim * DTYPE_NBYTES[self.dtype_name]


@dataclass(slots=True, frozen=True)
class Header:
    """One message header; DATA headers announce `payload_nbytes` bytes for a block run."""

    kind: MessageKind
    seq: int
    token: bytes
    request_id: str
    layer: int
    first_block_id: int
    num_blocks: int
    layout: WireLayout
    payload_nbytes: int


@dataclass(slots=True, frozen=True)
class Ack:
    """The receiver's answer to the header with sequence number `seq`."""

    seq: int
    status: AckStatus
    instance_id: bytes
    reason: str


@dataclass(slots=True, frozen=True)
class Hello:
    """What a receiver announces on each new connection."""

    instance_id: bytes
    num_blocks: int
    layout: WireLayout


def payload_tag(seq: int) -> int:
    """The UCX tag of the payload that follows the header with sequence number `seq`."""
    return _PAYLOAD_TAG_BASE + seq


def _seal(body: bytes) -> bytearray:
    return bytearray(body + _CRC.pack(zlib.crc32(body)))


def _unseal(buffer: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    data = bytes(buffer)
    if len(data) != size + _CRC.size:
        raise MalformedMessage(f"{what} must be {size + _CRC.size} bytes, got {len(data)}")
    body, (crc,) = data[:size], _CRC.unpack(data[size:])
    if zlib.crc32(body) != crc:
        raise MalformedMessage(f"{what} checksum mismatch (short, long or corrupted message)")
    if body[:4] != MAGIC:
        raise MalformedMessage(f"{what} has bad magic {body[:4]!r}")
    return body


def encode_headers(headers: list[Header]) -> bytearray:
    """Packs 1..MAX_HEADERS_PER_BATCH headers into one batch message."""
    if not 1 <= len(headers) <= MAX_HEADERS_PER_BATCH:
        raise ValueError(f"a header batch holds 1..{MAX_HEADERS_PER_BATCH} headers, got {len(headers)}")
    return _seal(_BATCH.pack(MAGIC, VERSION, len(headers)) + b"".join(map(_pack_header, headers)))


def _pack_header(header: Header) -> bytes:
    request_id = header.request_id.encode()
    if len(request_id) > MAX_REQUEST_ID_NBYTES:
        raise ValueError(f"request id is {len(request_id)} bytes; at most {MAX_REQUEST_ID_NBYTES} fit a header")
    if len(header.token) != TOKEN_NBYTES:
        raise ValueError(f"token must be {TOKEN_NBYTES} bytes, got {len(header.token)}")
    layout = header.layout
    return _HEADER.pack(
        int(header.kind), len(request_id), header.seq, header.token, request_id, header.layer,
        header.first_block_id, header.num_blocks, layout.num_layers, layout.block_size, layout.num_kv_heads,
        layout.head_dim, DTYPE_CODES[layout.dtype_name], header.payload_nbytes)


def decode_headers(buffer: bytes | bytearray | memoryview) -> list[Header]:
    """Parses and self-checks a batch received into a MAX_BATCH_NBYTES zeroed buffer.

    Raises MalformedMessage with the reason. The bytes after the batch must be the buffer's
    zeros: a message shorter than its announced count fails the checksum.
    """
    data = bytes(buffer)
    if len(data) < _BATCH.size + _CRC.size:
        raise MalformedMessage(f"header batch of {len(data)} bytes is too short")
    magic, version, count = _BATCH.unpack_from(data)
    if magic != MAGIC:
        raise MalformedMessage(f"header batch has bad magic {magic!r}")
    if version != VERSION:
        raise MalformedMessage(f"header version {version} is not supported (expected {VERSION})")
    if not 1 <= count <= MAX_HEADERS_PER_BATCH:
        raise MalformedMessage(f"header batch announces {count} headers (1..{MAX_HEADERS_PER_BATCH} allowed)")
    end = _BATCH.size + count * _HEADER.size
    if len(data) < end + _CRC.size or any(data[end + _CRC.size:]):
        raise MalformedMessage(f"header batch is not {end + _CRC.size} bytes long as its count says")
    if zlib.crc32(data[:end]) != _CRC.unpack_from(data, end)[0]:
        raise MalformedMessage("header batch checksum mismatch (short, long or corrupted message)")
    return [_unpack_header(data, _BATCH.size + index * _HEADER.size) for index in range(count)]


def _unpack_header(data: bytes, offset: int) -> Header:
    (kind, request_id_len, seq, token, request_id, layer, first_block_id, num_blocks, num_layers, block_size,
     num_kv_heads, head_dim, dtype_code, payload_nbytes) = _HEADER.unpack_from(data, offset)
    if kind not in MessageKind._value2member_map_:
        raise MalformedMessage(f"unknown message kind {kind}")
    if request_id_len > MAX_REQUEST_ID_NBYTES:
        raise MalformedMessage(f"request id length {request_id_len} exceeds {MAX_REQUEST_ID_NBYTES}")
    if dtype_code not in DTYPE_NAMES:
        raise MalformedMessage(f"unknown dtype code {dtype_code}")
    if min(num_layers, block_size, num_kv_heads, head_dim) <= 0:
        raise MalformedMessage("layout fields must be positive")
    try:
        request_id_text = request_id[:request_id_len].decode()
    except UnicodeDecodeError:
        raise MalformedMessage("request id is not UTF-8") from None
    layout = WireLayout(num_layers, block_size, num_kv_heads, head_dim, DTYPE_NAMES[dtype_code])
    header = Header(MessageKind(kind), seq, token, request_id_text, layer, first_block_id, num_blocks,
                    layout, payload_nbytes)
    _check_sizes(header)
    return header


def _check_sizes(header: Header) -> None:
    if header.kind is MessageKind.DATA:
        if header.num_blocks <= 0:
            raise MalformedMessage("DATA header must announce at least one block")
        expected = header.num_blocks * header.layout.bytes_per_block
        if header.payload_nbytes != expected:
            raise MalformedMessage(f"DATA payload is {header.payload_nbytes} bytes but {header.num_blocks} "
                                   f"blocks of this layout are {expected}")
    elif header.num_blocks or header.payload_nbytes:
        raise MalformedMessage(f"{header.kind.name} header must carry no blocks and no payload")


def encode_ack(ack: Ack) -> bytearray:
    """Packs an acknowledgement; the reason is truncated to MAX_REASON_NBYTES."""
    reason = ack.reason.encode()[:MAX_REASON_NBYTES]
    return _seal(_ACK.pack(MAGIC, ack.seq, int(ack.status), len(reason), ack.instance_id, reason))


def decode_ack(buffer: bytes | bytearray | memoryview) -> Ack:
    """Parses an acknowledgement; raises MalformedMessage."""
    _, seq, status, reason_len, instance_id, reason = _ACK.unpack(_unseal(buffer, _ACK.size, "ack"))
    if status not in AckStatus._value2member_map_ or reason_len > MAX_REASON_NBYTES:
        raise MalformedMessage(f"ack has bad status {status} or reason length {reason_len}")
    return Ack(seq, AckStatus(status), instance_id, reason[:reason_len].decode(errors="replace"))


def encode_hello(hello: Hello) -> bytearray:
    """Packs the receiver's connection hello."""
    layout = hello.layout
    return _seal(_HELLO.pack(MAGIC, VERSION, hello.instance_id, layout.num_layers, hello.num_blocks,
                             layout.block_size, layout.num_kv_heads, layout.head_dim,
                             DTYPE_CODES[layout.dtype_name]))


def decode_hello(buffer: bytes | bytearray | memoryview) -> Hello:
    """Parses a connection hello; raises MalformedMessage."""
    body = _unseal(buffer, _HELLO.size, "hello")
    (_, version, instance_id, num_layers, num_blocks, block_size, num_kv_heads, head_dim,
     dtype_code) = _HELLO.unpack(body)
    if version != VERSION or dtype_code not in DTYPE_NAMES:
        raise MalformedMessage(f"hello has unsupported version {version} or dtype code {dtype_code}")
    layout = WireLayout(num_layers, block_size, num_kv_heads, head_dim, DTYPE_NAMES[dtype_code])
    return Hello(instance_id, num_blocks, layout)
