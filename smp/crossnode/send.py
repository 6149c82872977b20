"""Sending side of parity: stream this node's chunks to their holders; announce protection (and
failures) to every node of the job.

A node's blob for a step is its ranks' slots back to back (rank order), cut into k chunks. Chunk i
goes, raw, to the m parity holders of its stripe, in ~1 MiB messages copied once from the arenas
into the bytes gRPC sends (`smp.wire`: no protobuf copies), with an xxh3 checksum of the whole
chunk at the end, hashed from that copy while it is in cache (the holder verifies it and keeps it,
so a rebuilt chunk can be checked later). Per-node traffic per snapshot is therefore m x S; an
SMP's parity sends share one `Pacer` (`--parity-bandwidth`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import Executor, Future

import grpc

from smp import checksum, wire
from smp._proto import peer_pb2, snapshot_pb2
from smp.crossnode.membership import Membership
from smp.defaults import PEER_PIECE as PIECE
from smp.errors import MemoryLimitExceeded, PeerUnavailable, SmpError
from smp.layout import chunk_range
from smp.pacing import Pacer
from smp.peerclient import PeerClients

logger = logging.getLogger(__name__)


def blob_pieces(parts: list[memoryview], start: int, end: int) -> Iterator[memoryview]:
    """Pieces of at most PIECE bytes covering [start, end) of the concatenation of `parts`."""
    base = 0
    for part in parts:
        lo, hi = max(start, base), min(end, base + len(part))
        while lo < hi:
            step = min(PIECE, hi - lo)
            yield part[lo - base : lo - base + step]
            lo += step
        base += len(part)


def _requests(
    header: peer_pb2.ChunkHeader,
    parts: list[memoryview],
    start: int,
    end: int,
    digest: snapshot_pb2.ChunkDigest,
    sent: list[int],
    pacer: Pacer,
) -> Iterator[bytes]:
    """The serialized messages of one chunk stream: header, data pieces, checksum."""
    yield peer_pb2.PushChunkRequest(header=header).SerializeToString()
    hasher = checksum.StreamDigest()
    for piece in blob_pieces(parts, start, end):
        pacer.take(len(piece))
        message = wire.data_message(piece)
        hasher.update(memoryview(message)[len(message) - len(piece) :])  # the copy, in cache
        yield message
        sent[0] += len(piece)
    digest.checksum = hasher.value()
    yield peer_pb2.PushChunkRequest(checksum=digest.checksum).SerializeToString()


def send_chunks(
    clients: PeerClients,
    job_id: str,
    cluster: Membership,
    step: int,
    parts: list[memoryview],
    manifest: snapshot_pb2.NodeManifest,
    executor: Executor,
    timeout: float,
    pacer: Pacer,
) -> tuple[list[snapshot_pb2.ChunkDigest], int]:
    """Push every chunk of this node's blob to its holders; raises on the first failure.
    Returns the chunks' digests and the data bytes streamed."""
    group = cluster.group
    blob = sum(len(p) for p in parts)
    futures: list[Future[None]] = []
    digests = []
    sent = [0]
    for i, stripe in enumerate(group.data_stripes(cluster.node)):
        start, end = chunk_range(blob, group.k, i)
        for holder in group.holders(stripe):
            header = peer_pb2.ChunkHeader(
                job_id=job_id,
                step=step,
                from_node=cluster.node,
                stripe=stripe,
                length=end - start,
                manifest=manifest,
            )
            digest = snapshot_pb2.ChunkDigest(stripe=stripe, length=end - start)
            client = clients.get(cluster.addresses[holder], job_id, cluster.secret)
            requests = _requests(header, parts, start, end, digest, sent, pacer)
            futures.append(executor.submit(client.push_chunk, requests, timeout))
            if holder == group.holders(stripe)[0]:
                digests.append(digest)
    for fut in futures:
        fut.result()
    return digests, sent[0]


def announce(
    clients: PeerClients,
    job_id: str,
    cluster: Membership,
    step: int,
    executor: Executor,
    timeout: float,
) -> None:
    """Tell every other node of the job that this node holds `step` protected (best effort)."""

    def one(node: int) -> None:
        try:
            clients.get(cluster.addresses[node], job_id, cluster.secret).protected(
                job_id, cluster.node, step, timeout
            )
        except Exception as exc:  # noqa: BLE001 - a dead peer only delays the commit
            logger.warning(
                "job=%s step=%d: telling node %d it is protected failed: %s",
                job_id,
                step,
                node,
                exc,
            )

    for node in cluster.peers():
        executor.submit(one, node)


def announce_failure(
    clients: PeerClients,
    job_id: str,
    cluster: Membership,
    step: int,
    error: SmpError,
    executor: Executor,
    timeout: float,
) -> None:
    """Tell every other node of the job that `step` cannot commit, and why (best effort)."""

    def one(node: int) -> None:
        try:
            clients.get(cluster.addresses[node], job_id, cluster.secret).step_failed(
                job_id, cluster.node, step, error.code, str(error), timeout
            )
        except Exception as exc:  # noqa: BLE001 - that node's waiters time out instead
            logger.warning(
                "job=%s step=%d: telling node %d the step failed failed: %s",
                job_id,
                step,
                node,
                exc,
            )

    for node in cluster.peers():
        executor.submit(one, node)


def failure_of(exc: BaseException, node: int, step: int) -> SmpError:
    """What a failed send means for the step: a holder's memory refusal stays one (the trainers
    hear it as such); anything else is a peer that could not take the chunk."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return MemoryLimitExceeded(str(details))
    name = code.name if code is not None else type(exc).__name__
    return PeerUnavailable(
        f"node {node} could not send its parity chunks of step {step}: {name}: {details}"
    )
