"""Bulk bytes on the peer wire without protobuf copies, still in protobuf's encoding.

The peer service's streams carry their payload in a `bytes data = 2` field of a oneof
(PushChunkRequest, FetchCellResponse, FetchSlotResponse). Building such a message through protobuf
copies the piece in (message field), out (SerializeToString), and again when parsing. Here the
serialized form is written directly: the field's tag and length, then the piece, assembled in the
one copy that gRPC's Python API needs anyway (it only sends `bytes`); and a received data message
is read as a view into the bytes gRPC handed over. Every other message (headers, checksums) goes
through protobuf as usual. The wire is unchanged: a client or server built from peer.proto with
the generated stubs interoperates with this one.
"""

from __future__ import annotations

from typing import Any

DATA_FIELD = 2
_DATA_TAG = (DATA_FIELD << 3) | 2  # field 2, length-delimited: 0x12


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def data_message(piece: memoryview | bytes) -> bytes:
    """The serialized message whose only field is `data = piece` (one copy of the piece)."""
    return b"".join((bytes((_DATA_TAG,)), _varint(len(piece)), piece))


def data_view(message: bytes) -> memoryview | None:
    """The `data` payload of a serialized message that holds only that field, as a view into
    `message`; None when the message is anything else (parse it with protobuf then)."""
    if len(message) < 2 or message[0] != _DATA_TAG:
        return None
    length, shift, at = 0, 0, 1
    while at < len(message) and at <= 10:
        byte = message[at]
        length |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            break
        shift += 7
    else:
        return None
    if at + length != len(message):
        return None  # more fields follow (or it is truncated): not the fast shape
    return memoryview(message)[at:]


def serialize_any(message: Any) -> bytes:
    """Response serializer for streams that mix pre-serialized data messages with protobuf ones."""
    if isinstance(message, bytes):
        return message
    out: bytes = message.SerializeToString()
    return out


class WireError(ValueError):
    """A peer's stream that does not have the expected shape (a peer of another version?)."""
