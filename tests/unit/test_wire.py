"""The peer wire's fast path: data pieces written and read without protobuf, byte for byte the
encoding protobuf gives them (so peers built from peer.proto interoperate)."""

from __future__ import annotations

import pytest

from smp import wire
from smp._proto import peer_pb2, snapshot_pb2

MESSAGES = (peer_pb2.PushChunkRequest, peer_pb2.FetchCellResponse, peer_pb2.FetchSlotResponse)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 1 << 20, (1 << 20) + 7])
@pytest.mark.parametrize("cls", MESSAGES)
def test_a_data_piece_is_encoded_as_protobuf_encodes_it(cls: type, size: int) -> None:
    piece = bytes(i % 251 for i in range(size))
    encoded = wire.data_message(memoryview(piece))
    assert encoded == cls(data=piece).SerializeToString() or size == 0
    view = wire.data_view(cls(data=piece).SerializeToString() if size else encoded)
    assert view is not None and bytes(view) == piece
    assert cls.FromString(encoded).data == piece


def test_anything_but_a_lone_data_field_is_left_to_protobuf() -> None:
    header = peer_pb2.PushChunkRequest(header=peer_pb2.ChunkHeader(job_id="j", length=5))
    checksum = peer_pb2.PushChunkRequest(checksum=123)
    cell = peer_pb2.FetchCellResponse(header=peer_pb2.CellHeader(length=4, checksum=9))
    slot = peer_pb2.FetchSlotResponse(header=snapshot_pb2.SlotRecord(job_id="j"))
    for message in (header, checksum, cell, slot):
        assert wire.data_view(message.SerializeToString()) is None
    data = wire.data_message(b"abcd")
    assert wire.data_view(data + b"\x18\x01") is None  # a field after the data
    assert wire.data_view(data[:-1]) is None  # truncated
    assert wire.data_view(b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff") is None  # runaway
    assert wire.data_view(b"") is None and wire.data_view(b"\x12") is None


def test_mixed_streams_serialize_both_kinds() -> None:
    header = peer_pb2.FetchCellResponse(header=peer_pb2.CellHeader(length=4))
    assert wire.serialize_any(header) == header.SerializeToString()
    assert wire.serialize_any(b"\x12\x01x") == b"\x12\x01x"
