"""The SMP's gRPC server: the peer service between nodes' SMPs and the standard health service.

The peer service grows with the multi-node release (parity exchange, rebuild); today it answers
Info so nodes and tools can check a peer is alive and which job it knows. Domain errors are mapped
to gRPC status codes here, never leaked as exceptions.
"""

from __future__ import annotations

import logging
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from smp import __version__
from smp._proto import peer_pb2, peer_pb2_grpc
from smp.service import SnapshotService

logger = logging.getLogger(__name__)

SERVICE_NAME = "ecsnap.v1.Peer"
# Streams of ~1 MiB messages; leave room above that for headers.
MAX_MESSAGE = 8 << 20


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, service: SnapshotService, node_id: str, engine: str) -> None:
        self._service = service
        self._node_id = node_id
        self._engine = engine
        self.address = ""

    def Info(
        self,
        request: peer_pb2.InfoRequest,
        context: grpc.ServicerContext,
    ) -> peer_pb2.InfoResponse:
        known = {job.job_id for job in self._service.jobs()}
        return peer_pb2.InfoResponse(
            smp_version=__version__,
            node_id=self._node_id,
            grpc_address=self.address,
            codec_engine=self._engine,
            knows_job=request.job_id in known,
        )


class PeerServer:
    def __init__(self, servicer: PeerServicer, host: str, port: int, workers: int = 4) -> None:
        self._servicer = servicer
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smp-grpc"),
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.so_reuseport", 0),
            ],
        )
        peer_pb2_grpc.add_PeerServicer_to_server(servicer, self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(target)
        if self.port == 0:
            raise OSError(f"gRPC could not bind {target}: is the port in use?")
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        servicer.address = self.address

    def start(self) -> None:
        self._server.start()
        for name in ("", SERVICE_NAME):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait(grace + 1)
