"""One job's view of its nodes on this SMP: layout, peers, secret, and who protected what.

Introduced by the job's own ranks (`Configure` over the local socket, after they exchanged their
SMPs' addresses and a per-job secret through their process group), so SMPs need no per-job
configuration. A step is committed when every node of the job reported it protected.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from smp._proto import snapshot_pb2
from smp.layout import Group, Layout
from smp.parity import ParityHolder

_STEPS_KEPT = 8


@dataclass
class ClusterState:
    layout: Layout
    node: int
    addresses: tuple[str, ...]
    secret: bytes
    holder: ParityHolder | None  # None for a single-node job
    protected_by: dict[int, set[int]] = field(default_factory=dict)  # node -> protected steps
    protected: int | None = None  # newest step protected on this node
    pending: int | None = None  # newest step begun on this node
    pending_since: float = 0.0
    digests: dict[int, list[snapshot_pb2.ChunkDigest]] = field(default_factory=dict)
    sending: set[int] = field(default_factory=set)  # steps whose chunks this node sent

    @property
    def group(self) -> Group:
        return self.layout.group_of(self.node)

    def peers(self) -> list[int]:
        return [n for n in range(self.layout.num_nodes) if n != self.node]

    def note_protected(self, node: int, step: int) -> None:
        steps = self.protected_by.setdefault(node, set())
        steps.add(step)
        while len(steps) > _STEPS_KEPT:
            steps.discard(min(steps))

    def committed(self) -> int | None:
        """Newest step every node of the job reported protected."""
        if len(self.protected_by) < self.layout.num_nodes:
            return None
        common = set.intersection(*self.protected_by.values())
        return max(common) if common else None

    def restart(self, committed: int | None) -> None:
        """The job was relaunched: forget what it had in flight after `committed`."""
        self.pending = None
        self.sending.clear()  # the relaunched job saves those steps again
        if committed is None or (self.protected is not None and self.protected > committed):
            self.protected = committed
        for steps in self.protected_by.values():
            steps.difference_update({s for s in steps if committed is None or s > committed})
        if self.holder is not None:
            self.holder.restart(committed)

    def begin(self, step: int) -> None:
        if self.pending is None or step > self.pending:
            self.pending, self.pending_since = step, time.monotonic()

    def save_ready(self, committed: int | None, timeout: float) -> bool:
        """No save in flight: the last begun step is committed, or it timed out."""
        if self.pending is None or (committed is not None and committed >= self.pending):
            return True
        return time.monotonic() - self.pending_since > timeout
