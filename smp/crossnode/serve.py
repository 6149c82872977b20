"""Serving peers: what this node holds of a job, for another node's rebuild or restore.

JobState: the committed step and every node manifest this node knows for it (its own, and the
contributors' that came with their chunks). FetchCell: this node's cell of a stripe, a data chunk
(read straight from the slots) or a parity cell, with its checksum. FetchSlot: a rank's whole
snapshot (its record, then its bytes), for a rank that now runs on another node.
"""

from __future__ import annotations

from smp import checksum
from smp._proto import snapshot_pb2
from smp.crossnode import send
from smp.crossnode.membership import Membership
from smp.errors import BadRequest, NotFound
from smp.layout import chunk_range
from smp.local import LocalSnapshots


def job_state(
    member: Membership, local: LocalSnapshots, job_id: str
) -> tuple[int | None, list[snapshot_pb2.NodeManifest]]:
    assert member.holder is not None  # a protected job
    committed = local.committed(job_id)
    if committed is None:
        return None, []
    manifests = list(member.holder.manifests.get(committed, {}).values())
    node = local.node_parts(job_id, committed)
    if node is not None:
        parts, records = node
        manifests.append(
            snapshot_pb2.NodeManifest(
                node=member.node,
                step=committed,
                blob_bytes=sum(len(p) for p in parts),
                slots=records,
                chunks=member.digests.get(committed, []),
            )
        )
    return committed, manifests


def cell_source(
    member: Membership, local: LocalSnapshots, job_id: str, step: int, stripe: int
) -> tuple[int, list[memoryview]]:
    """The checksum and the bytes (pieces) of this node's cell of `stripe` for `step`."""
    group = member.group
    assert member.holder is not None
    if not 0 <= stripe < group.size:
        raise BadRequest(f"stripe {stripe} is out of range 0..{group.size - 1}")
    if member.node in group.holders(stripe):
        cell = member.holder.cell(step, stripe)
        if cell is None or cell.arena is None or cell.checksum is None:
            raise NotFound(f"no complete parity of stripe {stripe} for step {step} here")
        return cell.checksum, [cell.arena.view()[: cell.length]]
    node = local.node_parts(job_id, step)
    if node is None:
        raise NotFound(f"this node holds no complete step {step} of job {job_id!r}")
    parts, _ = node
    i = group.data_stripes(member.node).index(stripe)
    start, end = chunk_range(sum(len(p) for p in parts), group.k, i)
    pieces = list(send.blob_pieces(parts, start, end))
    return checksum.digest(pieces), pieces


def slot_source(
    local: LocalSnapshots, job_id: str, rank: int, step: int
) -> tuple[snapshot_pb2.SlotRecord, list[memoryview]]:
    found = local.slot_of(job_id, rank, step)
    if found is None:
        raise NotFound(f"this node holds no complete step {step} of rank {rank} of job {job_id!r}")
    record, view = found
    return record, list(send.blob_pieces([view], 0, len(view)))
