"""The SMP's gRPC server: the peer service between nodes' SMPs and the standard health service.

Every peer call must carry the job's secret (metadata "x-ecsnap-token"), given to this SMP by the
job's own ranks; sizes, steps, stripes and nodes in every message are validated by the service.
Domain errors are mapped to gRPC status codes here, never leaked as exceptions.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from concurrent import futures
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from smp import __version__
from smp._proto import peer_pb2, peer_pb2_grpc
from smp.crossnode.coordinator import CrossNode
from smp.defaults import PEER_MAX_MESSAGE, PEER_PIECE, PEER_TOKEN_KEY
from smp.errors import BadRequest, SmpError
from smp.tls import PeerTls

logger = logging.getLogger(__name__)

SERVICE_NAME = "ecsnap.v1.Peer"

# Domain error code -> gRPC status (anything else is INTERNAL).
CODES: dict[str, grpc.StatusCode] = {
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "BAD_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "NOT_REGISTERED": grpc.StatusCode.NOT_FOUND,
    "CONFLICT": grpc.StatusCode.FAILED_PRECONDITION,
    "BUSY": grpc.StatusCode.FAILED_PRECONDITION,
    "MEMORY_LIMIT": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "STORE_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "CHECKSUM_MISMATCH": grpc.StatusCode.DATA_LOSS,
    "REBUILD_FAILED": grpc.StatusCode.FAILED_PRECONDITION,
    "ABORTED": grpc.StatusCode.ABORTED,
}


def _abort(context: grpc.ServicerContext, exc: SmpError) -> NoReturn:
    context.abort(CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))
    raise AssertionError("unreachable")  # context.abort raises


def advertised_address(host: str, port: int) -> str:
    """The address peers dial: a wildcard bind is advertised under this machine's host name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _token(context: grpc.ServicerContext) -> str:
    return next((str(v) for k, v in context.invocation_metadata() if k == PEER_TOKEN_KEY), "")


class PeerServicer(peer_pb2_grpc.PeerServicer):
    """Translates the peer wire into calls on the cross-node coordinator, and errors back."""

    def __init__(self, crossnode: CrossNode, node_id: str, engine: str) -> None:
        self._crossnode = crossnode
        self._node_id = node_id
        self._engine = engine
        self.address = ""

    def Info(
        self, request: peer_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> peer_pb2.InfoResponse:
        return peer_pb2.InfoResponse(
            smp_version=__version__,
            node_id=self._node_id,
            grpc_address=self.address,
            codec_engine=self._engine,
            knows_job=self._crossnode.member(request.job_id) is not None,
        )

    def PushChunk(
        self, request_iterator: Iterator[peer_pb2.PushChunkRequest], context: grpc.ServicerContext
    ) -> peer_pb2.PushChunkResponse:
        try:
            first = next(request_iterator, None)
            if first is None or not first.HasField("header"):
                raise BadRequest("a chunk stream must start with its header")
            h = first.header
            sink = self._crossnode.open_chunk(
                h.job_id, _token(context), h.step, h.stripe, h.from_node, h.length, h.manifest
            )
            for req in request_iterator:
                part = req.WhichOneof("part")
                if part == "data":
                    sink.write(req.data)
                elif part == "checksum":
                    self._crossnode.close_chunk(h.job_id, sink, req.checksum)
                    return peer_pb2.PushChunkResponse()
                else:
                    raise BadRequest("a chunk stream may carry one header only")
            raise BadRequest(f"chunk stream of node {h.from_node} ended without its checksum")
        except SmpError as exc:
            _abort(context, exc)

    def Protected(
        self, request: peer_pb2.ProtectedRequest, context: grpc.ServicerContext
    ) -> peer_pb2.ProtectedResponse:
        try:
            self._crossnode.authorize(request.job_id, _token(context))
            self._crossnode.peer_protected(request.job_id, request.node, request.step)
        except SmpError as exc:
            _abort(context, exc)
        return peer_pb2.ProtectedResponse()

    def StepFailed(
        self, request: peer_pb2.StepFailedRequest, context: grpc.ServicerContext
    ) -> peer_pb2.StepFailedResponse:
        try:
            self._crossnode.authorize(request.job_id, _token(context))
            self._crossnode.peer_failed(
                request.job_id, request.node, request.step, request.code, request.message
            )
        except SmpError as exc:
            _abort(context, exc)
        return peer_pb2.StepFailedResponse()

    def JobState(
        self, request: peer_pb2.JobStateRequest, context: grpc.ServicerContext
    ) -> peer_pb2.JobStateResponse:
        try:
            self._crossnode.authorize(request.job_id, _token(context))
            committed, manifests, moved = self._crossnode.job_state(request.job_id)
        except SmpError as exc:
            _abort(context, exc)
        response = peer_pb2.JobStateResponse(manifests=manifests, moved=moved)
        if committed is not None:
            response.has_committed, response.committed_step = True, committed
        return response

    def FetchCell(
        self, request: peer_pb2.FetchCellRequest, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.FetchCellResponse]:
        try:
            self._crossnode.authorize(request.job_id, _token(context))
            digest, parts = self._crossnode.cell_source(
                request.job_id, request.step, request.stripe
            )
        except SmpError as exc:
            _abort(context, exc)
        yield peer_pb2.FetchCellResponse(
            header=peer_pb2.CellHeader(length=sum(len(p) for p in parts), checksum=digest)
        )
        for part in parts:
            for at in range(0, len(part), PEER_PIECE):
                yield peer_pb2.FetchCellResponse(data=bytes(part[at : at + PEER_PIECE]))

    def FetchSlot(
        self, request: peer_pb2.FetchSlotRequest, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.FetchSlotResponse]:
        try:
            self._crossnode.authorize(request.job_id, _token(context))
            record, pieces = self._crossnode.slot_source(request.job_id, request.rank, request.step)
        except SmpError as exc:
            _abort(context, exc)
        yield peer_pb2.FetchSlotResponse(header=record)
        for piece in pieces:
            yield peer_pb2.FetchSlotResponse(data=bytes(piece))


class PeerServer:
    def __init__(
        self,
        servicer: PeerServicer,
        host: str,
        port: int,
        workers: int = 16,
        tls: PeerTls | None = None,
    ) -> None:
        self._servicer = servicer
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smp-grpc"),
            options=[
                ("grpc.max_receive_message_length", PEER_MAX_MESSAGE),
                ("grpc.max_send_message_length", PEER_MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        peer_pb2_grpc.add_PeerServicer_to_server(servicer, self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = (
            self._server.add_secure_port(target, tls.server_credentials())
            if tls is not None
            else self._server.add_insecure_port(target)
        )
        if self.port == 0:
            raise OSError(f"gRPC could not bind {target}: is the port in use?")
        self.address = advertised_address(host, self.port)
        servicer.address = self.address

    def start(self) -> None:
        self._server.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait(grace + 1)
