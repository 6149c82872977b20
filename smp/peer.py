"""The SMP's gRPC server: the peer service between nodes' SMPs and the standard health service.

The server is asynchronous (grpc.aio, on an event loop of its own thread): a call waiting for a
message costs no thread, so idle or hostile streams cannot starve the port, and health answers
whatever the peer calls do. `smp.peerguard` admits every call from its metadata (the job id and
the job's secret) before reading anything and bounds its time; the domain work (folding a chunk
into a parity cell, reading a cell) runs on a small thread pool, never on the loop. Sizes, steps,
stripes and nodes in every message are validated by the coordinator. Domain errors are mapped to
gRPC status codes, never leaked as exceptions.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer

from smp import __version__, wire
from smp._proto import peer_pb2
from smp.crossnode.coordinator import CrossNode
from smp.defaults import PEER_MAX_MESSAGE, PEER_PIECE
from smp.errors import BadRequest, SmpError
from smp.peerguard import Gate, PeerLimits, abort, tolerant
from smp.tls import PeerTls

SERVICE_NAME = "ecsnap.v1.Peer"
Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
PushRequest = tolerant(peer_pb2.PushChunkRequest)


def advertised_address(host: str, port: int) -> str:
    """The address peers dial: a wildcard bind is advertised under this machine's host name."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PeerServicer:
    """Translates the peer wire into calls on the cross-node coordinator, and errors back."""

    def __init__(
        self,
        crossnode: CrossNode,
        node_id: str,
        engine: str,
        limits: PeerLimits | None = None,
        workers: int = 8,
    ) -> None:
        self._crossnode = crossnode
        self._node_id = node_id
        self._engine = engine
        self.gate = Gate(crossnode.authorize, limits or PeerLimits())
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smp-peer")
        self.address = ""

    async def _run(self, context: Context, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the pool; a domain error aborts the call with its status."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))
        except SmpError as exc:
            await abort(context, exc)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the methods ----------------------------------------------------------------------------

    async def Info(self, request: Any, context: Context) -> peer_pb2.InfoResponse:
        """Unauthenticated, so it tells whether a job is known only to a caller holding its
        credentials."""
        request = await self._parsed(context, request)
        return peer_pb2.InfoResponse(
            smp_version=__version__,
            node_id=self._node_id,
            grpc_address=self.address,
            codec_engine=self._engine,
            knows_job=self.gate.authenticated(context, request.job_id),
        )

    async def PushChunk(self, _requests: Any, context: Context) -> peer_pb2.PushChunkResponse:
        """A chunk stream: header, data pieces (read as views, `smp.wire`), checksum."""
        gate, name = self.gate, "PushChunk"
        async with gate.call(context, name) as job:
            raw = await gate.read(context, name)
            first = None if raw is None else await self._parse(context, PushRequest, raw)
            if first is None or not first.HasField("header"):
                await abort(context, BadRequest("a chunk stream must start with its header"))
            h = first.header
            await self._check_job(context, job, h.job_id)
            token = gate.credentials(context)[1]
            sink = await self._run(
                context,
                self._crossnode.open_chunk,
                *(h.job_id, token, h.step, h.stripe, h.from_node, h.length, h.manifest),
            )
            while (raw := await gate.read(context, name)) is not None:
                piece = wire.data_view(raw) if isinstance(raw, bytes) else None
                if piece is None:  # not the fast shape: a checksum, or data protobuf-encoded
                    req = await self._parse(context, PushRequest, raw)
                    part = req.WhichOneof("part")
                    if part == "checksum":
                        close = self._crossnode.close_chunk
                        await self._run(context, close, job, sink, req.checksum)
                        return peer_pb2.PushChunkResponse()
                    if part != "data":
                        await abort(context, BadRequest("a chunk stream may carry one header only"))
                    piece = memoryview(req.data)
                # Inline: folding ~1 MiB into the cell takes well under a millisecond, and a hop
                # to the pool per message costs more than it (measured, bench cluster).
                try:
                    sink.write(piece)
                except SmpError as exc:
                    await abort(context, exc)
            await abort(
                context, BadRequest(f"chunk stream of node {h.from_node} ended without checksum")
            )
        raise AssertionError("unreachable")

    async def Protected(self, request: Any, context: Context) -> peer_pb2.ProtectedResponse:
        async with self.gate.unary(context, "Protected", request) as (job, r):
            await self._run(context, self._crossnode.peer_protected, job, r.node, r.step)
        return peer_pb2.ProtectedResponse()

    async def StepFailed(self, request: Any, context: Context) -> peer_pb2.StepFailedResponse:
        async with self.gate.unary(context, "StepFailed", request) as (job, r):
            failed = self._crossnode.peer_failed
            await self._run(context, failed, job, r.node, r.step, r.code, r.message)
        return peer_pb2.StepFailedResponse()

    async def JobState(self, request: Any, context: Context) -> peer_pb2.JobStateResponse:
        async with self.gate.unary(context, "JobState", request) as (job, _):
            committed, manifests, moved = await self._run(context, self._crossnode.job_state, job)
        response = peer_pb2.JobStateResponse(manifests=manifests, moved=moved)
        if committed is not None:
            response.has_committed, response.committed_step = True, committed
        return response

    async def FetchCell(self, request: Any, context: Context) -> None:
        name = "FetchCell"
        async with self.gate.unary(context, name, request) as (job, r):
            source = self._crossnode.cell_source
            digest, parts = await self._run(context, source, job, r.step, r.stripe)
            header = peer_pb2.CellHeader(length=sum(len(p) for p in parts), checksum=digest)
            await self.gate.write(context, name, peer_pb2.FetchCellResponse(header=header))
            for part in parts:
                for at in range(0, len(part), PEER_PIECE):
                    await self.gate.write(
                        context, name, wire.data_message(part[at : at + PEER_PIECE])
                    )

    async def FetchSlot(self, request: Any, context: Context) -> None:
        name = "FetchSlot"
        async with self.gate.unary(context, name, request) as (job, r):
            source = self._crossnode.slot_source
            record, pieces = await self._run(context, source, job, r.rank, r.step)
            await self.gate.write(context, name, peer_pb2.FetchSlotResponse(header=record))
            for piece in pieces:
                await self.gate.write(context, name, wire.data_message(piece))

    # -- helpers --------------------------------------------------------------------------------

    async def _parsed(self, context: Context, message: Any) -> Any:
        try:
            return self.gate.parsed(context, message)
        except SmpError as exc:
            await abort(context, exc)

    async def _parse(self, context: Context, parse: Callable[[bytes], Any], raw: Any) -> Any:
        return await self._parsed(context, parse(raw))

    async def _check_job(self, context: Context, job: str, named: str) -> None:
        try:
            self.gate.check_job(job, named)
        except SmpError as exc:
            await abort(context, exc)

    def handlers(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The service's methods, with deserializers that never raise (see peerguard). The bulk
        streams pass raw bytes: PushChunk parses its messages itself (data pieces as views),
        FetchCell and FetchSlot send pre-serialized data pieces (`smp.wire`)."""
        unary, stream_in, stream_out = (
            grpc.unary_unary_rpc_method_handler,
            grpc.stream_unary_rpc_method_handler,
            grpc.unary_stream_rpc_method_handler,
        )
        table: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        for name, kind, parse in (
            ("Info", unary, tolerant(peer_pb2.InfoRequest)),
            ("PushChunk", stream_in, None),
            ("Protected", unary, tolerant(peer_pb2.ProtectedRequest)),
            ("StepFailed", unary, tolerant(peer_pb2.StepFailedRequest)),
            ("JobState", unary, tolerant(peer_pb2.JobStateRequest)),
            ("FetchCell", stream_out, tolerant(peer_pb2.FetchCellRequest)),
            ("FetchSlot", stream_out, tolerant(peer_pb2.FetchSlotRequest)),
        ):
            table[name] = kind(
                getattr(self, name),
                request_deserializer=parse,
                response_serializer=wire.serialize_any,
            )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, table)


class PeerServer:
    """The gRPC server on its own event loop thread; binds at construction (raises OSError when
    the port cannot be bound)."""

    def __init__(
        self,
        servicer: PeerServicer,
        host: str,
        port: int,
        tls: PeerTls | None = None,
    ) -> None:
        self._servicer = servicer
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="smp-grpc", daemon=True)
        self._thread.start()
        self._health = AsyncHealthServicer()
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self._call(self._bind(target, tls))
        except BaseException:
            self._halt()
            raise
        if self.port == 0:
            self._halt()
            raise OSError(f"gRPC could not bind {target}: is the port in use?")
        self.address = advertised_address(host, self.port)
        servicer.address = self.address

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _bind(self, target: str, tls: PeerTls | None) -> int:
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", PEER_MAX_MESSAGE),
                ("grpc.max_send_message_length", PEER_MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
                # Connections that carry nothing are closed; a peer reconnects within seconds.
                ("grpc.max_connection_idle_ms", 5 * 60 * 1000),
                ("grpc.max_concurrent_streams", 256),
            ],
        )
        self._server.add_generic_rpc_handlers((self._servicer.handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if tls is not None:
            return self._server.add_secure_port(target, tls.server_credentials())
        return self._server.add_insecure_port(target)

    def start(self) -> None:
        async def start() -> None:
            await self._server.start()
            for name in ("", SERVICE_NAME):
                await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

        self._call(start())

    def stop(self, grace: float) -> None:
        async def stop() -> None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(grace)

        try:
            self._call(stop(), grace + 5)
        finally:
            self._halt()
            self._servicer.close()

    def _halt(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()
