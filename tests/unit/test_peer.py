"""The peer service on real gRPC (loopback): auth, validation of every field, and that a
malformed or hostile call leaves the SMP serving and its parity untouched."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import xxhash
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smp._proto import peer_pb2, peer_pb2_grpc, snapshot_pb2
from smp.crossnode.coordinator import CrossNode
from smp.crossnode.receive import ChunkSink
from smp.daemon import assemble
from smp.errors import Conflict, PeerUnavailable
from smp.jobs import RankInfo
from smp.peer import PeerServer, PeerServicer
from smp.peerclient import peer_metadata
from smp.peerguard import PeerLimits
from smp.service import SnapshotService
from smp.store import Store

JOB = "job-p"
SECRET = b"s" * 32


@dataclass
class Node:
    service: SnapshotService
    replication: CrossNode
    server: PeerServer
    stub: peer_pb2_grpc.PeerStub
    channel: grpc.Channel


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """Node 1 of a 3-node job (g=3, m=1), serving its peer port; its peers never start."""
    pool = ThreadPoolExecutor(2)
    parts = assemble(Store(str(tmp_path / "store"), 64 << 20), pool, "auto", rpc_timeout=2.0)
    service, replication = parts.service, parts.crossnode
    service.register(JOB, RankInfo(1, 3, 0, 1, 1, 3, 4242))
    server = PeerServer(PeerServicer(replication, "n1", "auto"), "127.0.0.1", 0)
    server.start()
    dead = ["127.0.0.1:1", "127.0.0.1:1", "127.0.0.1:1"]
    replication.configure(JOB, 1, 3, 3, 1, "consecutive", dead, SECRET)
    channel = grpc.insecure_channel(server.address)
    try:
        yield Node(service, replication, server, peer_pb2_grpc.PeerStub(channel), channel)
    finally:
        channel.close()
        server.stop(0.5)
        replication.close()
        service.store.close()
        pool.shutdown()


def auth(secret: bytes = SECRET) -> tuple[tuple[str, str], ...]:
    return peer_metadata(JOB, secret)


def chunk_stream(
    step: int,
    stripe: int,
    from_node: int,
    data: bytes,
    length: int | None = None,
    bad: bool = False,
) -> Iterator[peer_pb2.PushChunkRequest]:
    header = peer_pb2.ChunkHeader(
        job_id=JOB,
        step=step,
        from_node=from_node,
        stripe=stripe,
        length=len(data) if length is None else length,
        manifest=snapshot_pb2.NodeManifest(node=from_node, step=step, blob_bytes=len(data) * 2),
    )
    yield peer_pb2.PushChunkRequest(header=header)
    yield peer_pb2.PushChunkRequest(data=data)
    yield peer_pb2.PushChunkRequest(checksum=xxhash.xxh3_64_intdigest(data) ^ int(bad))


def code_of(call: object) -> grpc.StatusCode:
    assert isinstance(call, grpc.RpcError)
    code: grpc.StatusCode = call.code()
    return code


def expect(code: grpc.StatusCode, words: str, fn: object, *args: object, **kw: object) -> None:
    assert callable(fn)
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args, **kw)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)
    assert code_of(info.value) == code, info.value
    assert words in str(info.value.details()), info.value.details()  # type: ignore[attr-defined]


def test_calls_without_or_with_a_wrong_secret_are_refused(node: Node) -> None:
    req = peer_pb2.JobStateRequest(job_id=JOB)
    expect(grpc.StatusCode.UNAUTHENTICATED, "carries no secret", node.stub.JobState, req)
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "wrong or missing secret",
        node.stub.JobState,
        req,
        metadata=auth(b"x" * 32),
    )
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "wrong or missing secret",
        node.stub.PushChunk,
        chunk_stream(0, 0, 2, b"abc"),
        metadata=auth(b"y" * 32),
    )
    other = peer_pb2.JobStateRequest(job_id="someone-else")
    expect(grpc.StatusCode.UNAUTHENTICATED, "names job", node.stub.JobState, other, metadata=auth())
    theirs = peer_metadata("someone-else", SECRET)
    expect(grpc.StatusCode.NOT_FOUND, "not introduced", node.stub.JobState, other, metadata=theirs)
    # The right secret works, and the node is still serving after all of that.
    assert not node.stub.JobState(req, metadata=auth()).has_committed
    # Info needs no credentials, and so tells whether a job exists only to its members.
    assert not node.stub.Info(peer_pb2.InfoRequest(job_id=JOB)).knows_job
    assert node.stub.Info(peer_pb2.InfoRequest(job_id=JOB), metadata=auth()).knows_job


def test_every_field_is_validated(node: Node) -> None:
    g = node.replication.member(JOB)
    assert g is not None
    group = g.group
    mine = group.parity_cells(1)[0][0]  # a stripe node 1 holds parity of
    other = next(s for s in range(group.size) if 1 not in group.holders(s))
    sender = group.contributors(mine)[0]
    push = node.stub.PushChunk
    bad = grpc.StatusCode.INVALID_ARGUMENT
    expect(bad, "out of range", push, chunk_stream(0, 7, sender, b"a"), metadata=auth())
    elsewhere = group.contributors(other)[0]
    expect(bad, "holds no parity", push, chunk_stream(0, other, elsewhere, b"a"), metadata=auth())
    expect(bad, "contributes no data", push, chunk_stream(0, mine, 1, b"a"), metadata=auth())
    expect(bad, "memory limit", push, chunk_stream(0, mine, sender, b"a", 1 << 40), metadata=auth())
    expect(bad, "overruns", push, chunk_stream(1, mine, sender, b"abcd", 2), metadata=auth())
    expect(bad, "ended after", push, chunk_stream(2, mine, sender, b"ab", 4), metadata=auth())
    expect(bad, "must start with its header", push, iter([]), metadata=auth())
    expect(
        grpc.StatusCode.DATA_LOSS,
        "arrived corrupted",
        push,
        chunk_stream(3, mine, sender, b"abcd", bad=True),
        metadata=auth(),
    )
    protected = peer_pb2.ProtectedRequest(job_id=JOB, node=9, step=0)
    expect(bad, "not a peer", node.stub.Protected, protected, metadata=auth())
    fetch = peer_pb2.FetchCellRequest(job_id=JOB, step=0, stripe=99)
    expect(bad, "out of range", node.stub.FetchCell, fetch, metadata=auth())
    fetch = peer_pb2.FetchCellRequest(job_id=JOB, step=5, stripe=mine)
    expect(
        grpc.StatusCode.NOT_FOUND, "no complete parity", node.stub.FetchCell, fetch, metadata=auth()
    )
    # None of it completed a cell: the node holds no protected step, and still serves.
    assert node.replication.status(JOB) is not None
    assert node.replication.status(JOB).protected is None  # type: ignore[union-attr]
    assert node.stub.Info(peer_pb2.InfoRequest(job_id=JOB)).smp_version


def test_a_good_chunk_is_folded_in_and_served_back(node: Node) -> None:
    g = node.replication.member(JOB)
    assert g is not None
    group = g.group  # g=3, m=1: parity is the XOR of the two data chunks
    stripe = group.parity_cells(1)[0][0]
    a, b = group.contributors(stripe)
    da, db = bytes(range(200)) * 5, bytes(reversed(range(250))) * 4
    node.stub.PushChunk(chunk_stream(3, stripe, a, da), metadata=auth())
    # A node may not deliver the same chunk of a step twice (it would cancel out of the XOR).
    expect(
        grpc.StatusCode.FAILED_PRECONDITION,
        "already sent",
        node.stub.PushChunk,
        chunk_stream(3, stripe, a, da),
        metadata=auth(),
    )
    node.stub.PushChunk(chunk_stream(3, stripe, b, db), metadata=auth())
    fetch = peer_pb2.FetchCellRequest(job_id=JOB, step=3, stripe=stripe)
    parts = list(node.stub.FetchCell(fetch, metadata=auth()))
    body = b"".join(p.data for p in parts[1:])
    assert body == bytes(x ^ y for x, y in zip(da, db, strict=True))
    assert parts[0].header.checksum == xxhash.xxh3_64_intdigest(body)


def test_a_restarted_job_voids_uncommitted_parity(node: Node) -> None:
    g = node.replication.member(JOB)
    assert g is not None
    stripe = g.group.parity_cells(1)[0][0]
    a, _ = g.group.contributors(stripe)
    node.stub.PushChunk(chunk_stream(4, stripe, a, b"x" * 64), metadata=auth())
    # The job is relaunched: a new secret; parity of the uncommitted step 4 is void.
    new = b"n" * 32
    node.replication.configure(JOB, 1, 3, 3, 1, "consecutive", ["127.0.0.1:1"] * 3, new)
    fetch = peer_pb2.FetchCellRequest(job_id=JOB, step=4, stripe=stripe)
    expect(grpc.StatusCode.UNAUTHENTICATED, "wrong", node.stub.FetchCell, fetch, metadata=auth())
    node.stub.PushChunk(chunk_stream(4, stripe, a, b"y" * 64), metadata=auth(new))  # accepted again


def test_a_chunk_streaming_twice_at_once_is_refused(node: Node) -> None:
    """Two streams of one chunk (say, a sender that raced itself) would fold it in twice and
    cancel it out of the parity: the second is refused while the first is still arriving."""
    g = node.replication.member(JOB)
    assert g is not None
    stripe = g.group.parity_cells(1)[0][0]
    a, _ = g.group.contributors(stripe)
    manifest = snapshot_pb2.NodeManifest(node=a, step=6, blob_bytes=128)
    token = SECRET.hex()
    sink = node.replication.open_chunk(JOB, token, 6, stripe, a, 64, manifest)
    sink.write(b"z" * 32)  # half of it arrived
    with pytest.raises(Conflict, match="already sent"):
        node.replication.open_chunk(JOB, token, 6, stripe, a, 64, manifest)


def test_dead_peers_keep_a_step_from_committing_and_nothing_else(node: Node) -> None:
    """The node's peers never answer: its step is complete locally but never commits; the step
    is failed (so the next save goes ahead and waiters hear why), and the SMP serves on."""
    svc = node.service
    grant = svc.begin_save(JOB, 1, 2, 4096)
    with svc.store.arena_path(JOB, 1, grant.slot).open("r+b") as f:
        f.write(b"\x07" * 4096)
    svc.commit_save(JOB, 1, 2, grant.slot, grant.generation, 4096, b"manifest")
    deadline = time.monotonic() + 20
    while 2 not in svc.list_steps(JOB, 1)[0]:  # checksummed, complete on this node
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # the pushes to the dead peers fail (connection refused) meanwhile
    assert svc.commit_state(JOB).committed_step is None
    # The step can never commit now: it failed, so the next save need not wait for it.
    ready, pending, failure = node.replication.save_ready(JOB)
    assert ready and pending == 2
    assert isinstance(failure, PeerUnavailable) and "could not send" in str(failure)
    with pytest.raises(PeerUnavailable):
        svc.wait_committed(JOB, 2).result(timeout=5)
    assert node.stub.Info(peer_pb2.InfoRequest(job_id=JOB), metadata=auth()).knows_job


def test_slow_streams_and_crowds_are_bounded(node: Node) -> None:
    """A stream that keeps trickling is cut at the call limit, one that stops at the idle limit;
    calls beyond the per-client bound are refused at once; health answers throughout."""
    limits = PeerLimits(idle_s=0.5, calls_per_client=2, max_call_s=1.5)
    server = PeerServer(PeerServicer(node.replication, "n1", "auto", limits), "127.0.0.1", 0)
    server.start()
    channel = grpc.insecure_channel(server.address)
    stub = peer_pb2_grpc.PeerStub(channel)
    try:
        mine = node.replication.member(JOB)
        assert mine is not None
        stripe = mine.group.parity_cells(1)[0][0]
        sender = mine.group.contributors(stripe)[0]
        steps = iter(range(1, 10))

        def trickle(pause: float, count: int) -> Iterator[peer_pb2.PushChunkRequest]:
            yield next(chunk_stream(next(steps), stripe, sender, b"x" * 64, length=1 << 20))
            for _ in range(count):
                time.sleep(pause)
                yield peer_pb2.PushChunkRequest(data=b"x" * 64)

        expect(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "ran past its 1.5 s limit",
            stub.PushChunk,
            trickle(0.2, 40),
            metadata=auth(),
            timeout=10,
        )
        expect(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "idle stream cut",
            stub.PushChunk,
            trickle(3.0, 1),
            metadata=auth(),
            timeout=10,
        )
        hold = [stub.PushChunk.future(trickle(0.4, 3), metadata=auth(), timeout=10) for _ in "ab"]
        time.sleep(0.2)
        expect(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "calls from",
            stub.JobState,
            peer_pb2.JobStateRequest(job_id=JOB),
            metadata=auth(),
        )
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1
        for f in hold:
            f.exception(timeout=10)
        assert not stub.JobState(peer_pb2.JobStateRequest(job_id=JOB), metadata=auth()).moved
    finally:
        channel.close()
        server.stop(0.5)


def test_a_reused_cell_is_overwritten_not_zeroed_and_folds_interleaved_pieces(node: Node) -> None:
    """Cells are double buffered: step 5 lands in step 3's cell, over its stale bytes. The first
    share to reach a byte overwrites it and later ones XOR in, whatever the interleaving and the
    pieces' sizes (chunks of different lengths included)."""
    g = node.replication.member(JOB)
    assert g is not None and g.holder is not None
    holder, group = g.holder, g.group
    stripe = group.parity_cells(1)[0][0]
    a, b = group.contributors(stripe)
    manifest = snapshot_pb2.NodeManifest()
    rng = random.Random(7)
    for step in (3, 4, 5, 6):
        da = rng.randbytes(rng.randrange(1000, 5000))
        db = rng.randbytes(rng.randrange(1000, 5000))
        sinks = {}
        for frm, data in ((a, da), (b, db)):
            cell, epoch = holder.begin(step, stripe, frm, len(data), manifest, None)
            sinks[frm] = (ChunkSink(holder, cell, epoch, step, frm, stripe, len(data)), data)
        at = {a: 0, b: 0}
        while any(at[n] < len(sinks[n][1]) for n in at):
            frm = rng.choice([n for n in at if at[n] < len(sinks[n][1])])
            sink, data = sinks[frm]
            n = rng.randrange(1, 700)
            sink.write(memoryview(data)[at[frm] : at[frm] + n])
            at[frm] = min(at[frm] + n, len(data))
        for sink, data in sinks.values():
            sink.finish(xxhash.xxh3_64_intdigest(data))
        cell = holder.cell(step, stripe)
        assert cell is not None and cell.arena is not None
        width = max(len(da), len(db))
        want = bytes(
            x ^ y for x, y in zip(da.ljust(width, b"\0"), db.ljust(width, b"\0"), strict=True)
        )
        assert bytes(cell.arena.view(cell.length)) == want, step
