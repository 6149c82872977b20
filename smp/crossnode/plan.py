"""Planning a rebuild of a lost node: ask every peer for the job's committed step and the node
manifests it holds; decide the step, the surviving group members, and the digests to check.

A peer that does not answer (down, refusing the secret or the TLS certificate) is named: when no
answering peer holds anything committed, that is an error naming them, never "nothing committed"
(which would start the job again from scratch).
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass

from smp._proto import peer_pb2, snapshot_pb2
from smp.crossnode.membership import Membership
from smp.errors import RebuildFailed
from smp.peerclient import PeerClients

logger = logging.getLogger(__name__)


@dataclass
class Plan:
    step: int
    manifests: dict[int, snapshot_pb2.NodeManifest]  # every group member's, digests merged
    alive: set[int]  # group members holding the step's cells
    where: str  # "step S of job J, group G (nodes ...), missing nodes [...]" for messages

    def digests(self, node: int) -> dict[int, snapshot_pb2.ChunkDigest]:
        return {d.stripe: d for d in self.manifests[node].chunks}


def _merge_manifests(
    states: dict[int, peer_pb2.JobStateResponse], step: int
) -> dict[int, snapshot_pb2.NodeManifest]:
    """Every node manifest of `step` known to the survivors, with all chunk digests merged."""
    merged: dict[int, snapshot_pb2.NodeManifest] = {}
    for state in states.values():
        for m in state.manifests:
            if m.step != step:
                continue
            have = merged.setdefault(
                m.node,
                snapshot_pb2.NodeManifest(
                    node=m.node, step=m.step, blob_bytes=m.blob_bytes, slots=m.slots
                ),
            )
            known = {d.stripe for d in have.chunks}
            have.chunks.extend(d for d in m.chunks if d.stripe not in known)
    return merged


def plan(
    clients: PeerClients,
    job_id: str,
    cluster: Membership,
    executor: Executor,
    timeout: float,
) -> Plan | None:
    """What to rebuild; None only when every peer answered and none holds a committed step."""
    me, group = cluster.node, cluster.group
    futures = {
        n: executor.submit(
            clients.get(cluster.addresses[n], job_id, cluster.secret).job_state, job_id, timeout
        )
        for n in cluster.peers()
    }
    states: dict[int, peer_pb2.JobStateResponse] = {}
    failures: dict[int, str] = {}
    for node, fut in futures.items():
        try:
            states[node] = fut.result()
        except Exception as exc:  # noqa: BLE001 - an unreachable peer counts as lost
            failures[node] = cause(exc)
            logger.warning("job=%s: node %d did not answer: %s", job_id, node, failures[node])
    committed = [s.committed_step for s in states.values() if s.has_committed]
    if any(s.moved for s in states.values()):
        # The job was laid out anew (renumbered, resized): its snapshots are found where they
        # are by the restore, not rebuilt as this node's old place in another layout.
        logger.info("job=%s: the job's nodes were laid out anew: nothing to rebuild", job_id)
        return None
    if not committed:
        if failures:
            causes = "; ".join(
                f"node {n} at {cluster.addresses[n]}: {c}" for n, c in failures.items()
            )
            raise RebuildFailed(
                f"cannot rebuild node {me} of job {job_id!r}: no peer that answered holds a "
                f"committed step, and node(s) {sorted(failures)} did not answer ({causes}). "
                "Check that their SMPs run and accept this one (address, TLS certificates)"
            )
        return None
    step = max(committed)
    # A peer that has not yet seen the newest commit still holds that step's cells; one with
    # nothing committed (a replacement, like this one) holds none.
    alive = {n for n, s in states.items() if s.has_committed} & set(group.members)
    missing = sorted(set(group.members) - alive - {me})
    where = (
        f"step {step} of job {job_id!r}, group {group.index} (nodes "
        f"{list(group.members)}), missing nodes {sorted([*missing, me])}"
    )
    manifests = _merge_manifests(states, step)
    if me not in manifests or any(n not in manifests for n in group.members):
        raise RebuildFailed(
            f"cannot rebuild {where}: the survivors lack the node manifests "
            "needed (more nodes lost than the parity covers?)"
        )
    return Plan(step, manifests, alive, where)


def cause(exc: BaseException) -> str:
    """A failed peer call in a line: its gRPC code and details, or the exception."""
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):
        return f"{code().name}: {details()}"
    return str(exc) or type(exc).__name__
