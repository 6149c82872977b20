"""The peer port under abuse (real SMPs, real gRPC on loopback): 64 idle streams without
credentials, idle streams of a job member, and a flood of garbage, while a real 2-node job keeps
committing and the health service keeps answering within a second."""

from __future__ import annotations

import mmap
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecsnap.control import ControlClient
from smp._proto import peer_pb2, peer_pb2_grpc, snapshot_pb2
from smp.peerclient import peer_metadata
from smp.testing import LocalSMP

pytestmark = pytest.mark.timeout(180)

JOB = "abused"
KEY = b"abused-job-key-0123456789"
SIZE = 1 << 20
IDLE_S = 2


@pytest.fixture
def nodes(workdir: Path) -> Iterator[list[LocalSMP]]:
    args = ("--peer-idle-timeout", str(IDLE_S))
    started = [
        LocalSMP(workdir / f"n{i}", memory_limit="64M", extra_args=args).start() for i in range(2)
    ]
    try:
        yield started
    finally:
        for n in started:
            n.close()


def join(nodes: list[LocalSMP], secret: bytes) -> tuple[list[ControlClient], list[str]]:
    clients = [ControlClient(n.socket, JOB, 30.0, job_key=KEY) for n in nodes]
    addresses = [
        c.register(i, 2, 0, 1, i, 2, os.getpid(), "host").grpc_address
        for i, c in enumerate(clients)
    ]
    for i, c in enumerate(clients):
        c.configure(i, 2, 2, 1, "consecutive", addresses, secret)
    return clients, addresses


def save_step(clients: list[ControlClient], step: int) -> None:
    grants = []
    for i, c in enumerate(clients):
        g = c.begin_save(i, step, SIZE)
        with open(g.path, "r+b") as f, mmap.mmap(f.fileno(), g.capacity) as m:
            m[:SIZE] = bytes([step + i]) * SIZE
        grants.append(g)
    manifest = snapshot_pb2.Manifest().SerializeToString()
    for i, (c, g) in enumerate(zip(clients, grants, strict=True)):
        c.commit_save(i, step, g, SIZE, manifest)
    for c in clients:
        assert c.wait_committed(step, 30_000, 35.0).committed, f"step {step} did not commit"


def test_idle_streams_and_garbage_do_not_stop_commits_or_health(nodes: list[LocalSMP]) -> None:
    secret = secrets.token_bytes(32)
    clients, addresses = join(nodes, secret)
    target = addresses[0]
    channel = grpc.insecure_channel(target)
    stub = peer_pb2_grpc.PeerStub(channel)
    hold = threading.Event()

    def idle() -> Iterator[peer_pb2.PushChunkRequest]:
        hold.wait(60)  # a stream that never sends its first message
        yield from ()

    strangers = [stub.PushChunk.future(idle(), timeout=60) for _ in range(64)]
    member = peer_metadata(JOB, secret)
    members = [stub.PushChunk.future(idle(), timeout=60, metadata=member) for _ in range(4)]
    garbage = channel.unary_unary("/ecsnap.v1.Peer/JobState")  # raw bytes, no serializer
    stop = threading.Event()
    flood_codes: set[grpc.StatusCode] = set()

    def flood() -> None:
        while not stop.is_set():
            for metadata in (None, member):
                try:
                    garbage(os.urandom(64) + b"\xff\xff", timeout=5, metadata=metadata)
                except grpc.RpcError as exc:
                    flood_codes.add(exc.code())

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    health = health_pb2_grpc.HealthStub(channel)
    worst = 0.0
    try:
        for step in range(1, 6):
            save_step(clients, step)
            t0 = time.perf_counter()
            reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            worst = max(worst, time.perf_counter() - t0)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        # The strangers were turned away before a message was read; the members' idle streams
        # were cut once idle too long.
        for f in strangers:
            assert f.exception(timeout=10) is not None
            assert f.code() == grpc.StatusCode.UNAUTHENTICATED
        for f in members:
            assert f.exception(timeout=IDLE_S * 5) is not None
            assert f.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in str(f.details())
    finally:
        stop.set()
        hold.set()
        flooder.join(10)
        channel.close()
    assert worst < 1.0
    assert flood_codes <= {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}
    assert grpc.StatusCode.INVALID_ARGUMENT in flood_codes  # the members' garbage was parsed
    log = nodes[0].log.read_text()
    assert "Traceback" not in log
    # One line per client address and kind of refusal per minute, however many came.
    assert log.count("does not parse") <= 2, log[-2000:]
    assert log.count("PushChunk refused") <= 2, log[-2000:]
    assert nodes[0].proc is not None and nodes[0].proc.poll() is None
