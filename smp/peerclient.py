"""Calls to other SMPs' peer service: one channel per address, the job's credentials (its id
and secret, as metadata) on every call.

Streams carry ~1 MiB messages. The bulk methods (PushChunk, FetchCell, FetchSlot) are called with
identity serializers: their data messages are written and read by `smp.wire` (one copy each way
in Python, none in protobuf), everything else is protobuf as usual.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from smp import wire
from smp._proto import peer_pb2, peer_pb2_grpc, snapshot_pb2
from smp.defaults import PEER_JOB_KEY, PEER_MAX_MESSAGE, PEER_TOKEN_KEY
from smp.tls import PeerTls, open_channel


def peer_metadata(job_id: str, secret: bytes) -> tuple[tuple[str, str], ...]:
    """What a peer call presents: the peer port checks it before reading any message."""
    return ((PEER_JOB_KEY, job_id), (PEER_TOKEN_KEY, secret.hex()))


class PeerClient:
    def __init__(
        self, address: str, job_id: str, secret: bytes, tls: PeerTls | None = None
    ) -> None:
        self.address = address
        self._channel = open_channel(
            address,
            tls,
            options=[
                ("grpc.max_receive_message_length", PEER_MAX_MESSAGE),
                ("grpc.max_send_message_length", PEER_MAX_MESSAGE),
                # A restarted peer is reached again within seconds (the default backoff grows
                # to two minutes, during which every step would fail to commit).
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self.stub = peer_pb2_grpc.PeerStub(self._channel)
        self.metadata = peer_metadata(job_id, secret)
        method = "/ecsnap.v1.Peer/"
        self._push = self._channel.stream_unary(
            method + "PushChunk", request_serializer=None, response_deserializer=None
        )
        self._fetch_cell = self._channel.unary_stream(
            method + "FetchCell",
            request_serializer=peer_pb2.FetchCellRequest.SerializeToString,
            response_deserializer=None,
        )
        self._fetch_slot = self._channel.unary_stream(
            method + "FetchSlot",
            request_serializer=peer_pb2.FetchSlotRequest.SerializeToString,
            response_deserializer=None,
        )

    def push_chunk(self, requests: Iterator[bytes], timeout: float) -> None:
        """Stream one chunk: serialized PushChunkRequest messages (see `send`)."""
        self._push(requests, timeout=timeout, metadata=self.metadata)

    def protected(self, job_id: str, node: int, step: int, timeout: float) -> None:
        self.stub.Protected(
            peer_pb2.ProtectedRequest(job_id=job_id, node=node, step=step),
            timeout=timeout,
            metadata=self.metadata,
        )

    def step_failed(
        self, job_id: str, node: int, step: int, code: str, message: str, timeout: float
    ) -> None:
        self.stub.StepFailed(
            peer_pb2.StepFailedRequest(
                job_id=job_id, node=node, step=step, code=code, message=message
            ),
            timeout=timeout,
            metadata=self.metadata,
        )

    def job_state(self, job_id: str, timeout: float) -> peer_pb2.JobStateResponse:
        response: peer_pb2.JobStateResponse = self.stub.JobState(
            peer_pb2.JobStateRequest(job_id=job_id), timeout=timeout, metadata=self.metadata
        )
        return response

    def fetch_cell(
        self, job_id: str, step: int, stripe: int, timeout: float
    ) -> tuple[peer_pb2.CellHeader, Iterator[memoryview]]:
        """The peer's cell of `stripe` for `step`: its header, then its ~1 MiB pieces as they
        arrive."""
        request = peer_pb2.FetchCellRequest(job_id=job_id, step=step, stripe=stripe)
        stream = iter(self._fetch_cell(request, timeout=timeout, metadata=self.metadata))
        header: peer_pb2.CellHeader = _header(stream, peer_pb2.FetchCellResponse, "FetchCell")
        return header, _pieces(stream, "FetchCell")

    def fetch_slot(
        self, job_id: str, rank: int, step: int, timeout: float
    ) -> tuple[snapshot_pb2.SlotRecord, Iterator[memoryview]]:
        """The peer's snapshot of `rank` at `step`: its record, then its ~1 MiB pieces."""
        request = peer_pb2.FetchSlotRequest(job_id=job_id, rank=rank, step=step)
        stream = iter(self._fetch_slot(request, timeout=timeout, metadata=self.metadata))
        record: snapshot_pb2.SlotRecord = _header(stream, peer_pb2.FetchSlotResponse, "FetchSlot")
        return record, _pieces(stream, "FetchSlot")

    def close(self) -> None:
        self._channel.close()


def _header(stream: Iterator[bytes], cls: Any, method: str) -> Any:
    """The header that opens a fetch stream (WireError when it is missing or garbled)."""
    first = next(stream, None)
    if first is None:
        raise wire.WireError(f"{method}: the stream ended before its header")
    try:
        message = cls.FromString(first)
    except Exception as exc:  # noqa: BLE001 - any undecodable header is the same error
        raise wire.WireError(f"{method}: a header that does not parse: {exc}") from None
    if not message.HasField("header"):
        raise wire.WireError(f"{method}: the stream did not start with its header")
    return message.header


def _pieces(stream: Iterator[bytes], method: str) -> Iterator[memoryview]:
    for message in stream:
        view = wire.data_view(message)
        if view is None:
            raise wire.WireError(
                f"{method}: a {len(message)}-byte message that is not a data piece"
            )
        yield view


class PeerClients:
    """A cache of clients by address and job, rebuilt when the job's secret changes."""

    def __init__(self, tls: PeerTls | None = None) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str, bytes], PeerClient] = {}

    def get(self, address: str, job_id: str, secret: bytes) -> PeerClient:
        key = (address, job_id, secret)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = PeerClient(address, job_id, secret, self._tls)
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
