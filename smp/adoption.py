"""Re-adopting what an earlier daemon left in the store, at start.

A restarted SMP (crashed, upgraded, restarted by systemd) takes back every complete snapshot whose
record is intact and describes its arena file, every parity cell whose bytes still match its
record, and the memberships of its multi-node jobs with their committed steps, so protection is
what it was before the restart. What could not be re-adopted is reported: the job's status says
its protection is degraded until its next committed step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from smp._proto import snapshot_pb2
from smp.crossnode.coordinator import CrossNode
from smp.crossnode.membership import Membership, layout_of
from smp.local import LocalSnapshots
from smp.store import AdoptedCell, Store

logger = logging.getLogger(__name__)


@dataclass
class Readopted:
    snapshots: int = 0
    jobs_across_nodes: int = 0
    degraded: dict[str, str] = field(default_factory=dict)  # job -> why


def readopt(store: Store, local: LocalSnapshots, crossnode: CrossNode) -> Readopted:
    found = store.adopt_all()
    out = Readopted()
    for job_id, digest in found.keys.items():
        local.adopt_key(job_id, digest)
    for job_id, step in found.finished.items():
        local.adopt_finished(job_id, step)
    # Slots first: whether a job's committed step is still protected here depends on them.
    out.snapshots = sum(local.adopt_slot(item) for item in found.slots)
    cells: dict[str, list[AdoptedCell]] = {}
    for cell in found.cells:
        cells.setdefault(cell.job_id, []).append(cell)
    for job_id, record in found.clusters.items():
        why = _adopt_member(crossnode, local, record, cells.pop(job_id, []))
        out.jobs_across_nodes += 1
        if why:
            out.degraded[job_id] = why
    for orphans in cells.values():  # parity of a job nobody introduced: it protects nothing
        for cell in orphans:
            store.free(cell.arena)
    local.settle_adopted()
    if out.snapshots or out.jobs_across_nodes:
        logger.info(
            "re-adopted %d complete snapshots and %d multi-node job(s) from %s",
            out.snapshots,
            out.jobs_across_nodes,
            store.root,
        )
    return out


def _adopt_member(
    crossnode: CrossNode,
    local: LocalSnapshots,
    record: snapshot_pb2.ClusterRecord,
    cells: list[AdoptedCell],
) -> str:
    """A job an earlier daemon protected: its membership, committed step and parity cells come
    back; returns why protection is degraded ("" when it is not)."""
    job_id = record.job_id
    layout = layout_of(record)
    holder = crossnode.new_holder(job_id, layout, record.node)
    assert holder is not None  # a multi-node layout
    member = Membership(layout, record.node, tuple(record.addresses), record.secret, holder)
    holder.adopt(cells)
    crossnode.add(job_id, member)
    if not record.has_committed:
        return ""
    step = record.committed
    member.sent(step, list(record.sent))
    local.adopt_commit(job_id, step, layout.num_nodes)
    lacking = []
    if local.node_parts(job_id, step) is None:
        lacking.append("its ranks' snapshots")
    if not holder.complete(step):
        lacking.append("the parity it holds for its group")
    if lacking:
        why = (
            f"node {record.node} lost {' and '.join(lacking)} of committed step {step} in a "
            "restart; the next committed step restores protection"
        )
        local.set_degraded(job_id, why)
        return why
    member.protected = step
    return ""
