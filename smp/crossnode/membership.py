"""One job's nodes, as this SMP knows them: layout, peers, secret, and what is in flight here.

Introduced by the job's own ranks (`Configure` over the local socket, after they exchanged their
SMPs' addresses and a per-job secret through their process group), so SMPs need no per-job
configuration. Persisted (`ClusterRecord`, with the newest committed step) so a restarted SMP keeps
serving its peers and protecting the job before its ranks come back. Whether a step is committed
is decided in `smp.commits`, from the protection reports of every node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from smp._proto import snapshot_pb2
from smp.crossnode.receive import ParityHolder
from smp.errors import BadRequest
from smp.layout import Group, Layout

_STEPS_KEPT = 4


@dataclass(frozen=True)
class ClusterStatus:
    node: int
    group_members: list[int]
    parity_bytes: int
    protected: int | None


@dataclass
class Membership:
    layout: Layout
    node: int
    addresses: tuple[str, ...]
    secret: bytes
    holder: ParityHolder | None  # None for a single-node job
    protected: int | None = None  # newest step protected on this node
    pending: int | None = None  # newest step begun on this node
    pending_since: float = 0.0
    # Digests of the chunks this node sent, per step (a rebuild checks rebuilt chunks by them).
    digests: dict[int, list[snapshot_pb2.ChunkDigest]] = field(default_factory=dict)
    sending: set[int] = field(default_factory=set)  # steps whose chunks this node sent
    moved: bool = False  # the job's nodes were laid out anew while this SMP held its snapshots

    @property
    def group(self) -> Group:
        return self.layout.group_of(self.node)

    def peers(self) -> list[int]:
        return [n for n in range(self.layout.num_nodes) if n != self.node]

    def check_peer(self, node: int) -> None:
        if not 0 <= node < self.layout.num_nodes or node == self.node:
            raise BadRequest(f"node {node} is not a peer of node {self.node} in this job")

    def carry_over(self, old: Membership) -> None:
        """The same place in the same layout, introduced again: what was in flight stays."""
        self.protected, self.pending = old.protected, old.pending
        self.pending_since, self.digests, self.sending = old.pending_since, old.digests, old.sending

    def begin(self, step: int) -> None:
        if self.pending is None or step > self.pending:
            self.pending, self.pending_since = step, time.monotonic()

    def save_ready(self, committed: int | None, failed: bool, timeout: float) -> bool:
        """No save in flight: the last begun step is committed, failed, or it timed out."""
        if self.pending is None or failed or (committed is not None and committed >= self.pending):
            return True
        return time.monotonic() - self.pending_since > timeout

    def sent(self, step: int, digests: list[snapshot_pb2.ChunkDigest]) -> None:
        self.digests[step] = digests
        for old in [s for s in self.digests if s < step - _STEPS_KEPT]:
            del self.digests[old]

    def start_sending(self, step: int) -> bool:
        """Claim sending `step` (the last two ranks may complete at once); False if claimed."""
        if step in self.sending:
            return False
        self.sending.add(step)
        for old in [s for s in self.sending if s < step - _STEPS_KEPT]:
            self.sending.discard(old)
        return True

    def restart(self, committed: int | None) -> None:
        """The job was relaunched (or rewound): forget what it had in flight after `committed`."""
        self.pending = None
        self.sending = {s for s in self.sending if committed is not None and s <= committed}
        if self.protected is not None and (committed is None or self.protected > committed):
            self.protected = committed
        if self.holder is not None:
            self.holder.restart(committed)

    def status(self) -> ClusterStatus:
        holder = self.holder
        return ClusterStatus(
            self.node,
            list(self.group.members) if holder else [],
            holder.nbytes if holder else 0,
            self.protected,
        )

    def record(self, job_id: str, committed: int | None) -> snapshot_pb2.ClusterRecord:
        rec = snapshot_pb2.ClusterRecord(
            job_id=job_id,
            node=self.node,
            num_nodes=self.layout.num_nodes,
            group_size=self.layout.group_size,
            parity=self.layout.parity,
            placement=self.layout.placement,
            addresses=list(self.addresses),
            secret=self.secret,
        )
        if committed is not None:
            rec.has_committed, rec.committed = True, committed
            rec.sent.extend(self.digests.get(committed, []))
        return rec


def layout_of(rec: snapshot_pb2.ClusterRecord) -> Layout:
    return Layout(rec.num_nodes, rec.group_size, rec.parity, rec.placement or "consecutive")
