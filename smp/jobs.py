"""What the SMP holds, as plain data: jobs, their ranks, each rank's two slots, and the small
values the service hands out (grants, opened snapshots, commit states). No locking and no I/O:
`SnapshotService` owns these objects and guards them with its lock.
"""

from __future__ import annotations

import enum
from concurrent.futures import Future
from dataclasses import dataclass, field

from smp import checksum
from smp.store import Arena

SLOTS_PER_RANK = 2
MAX_MANIFEST = 64 << 20
MAX_SNAPSHOT = 1 << 48
_ABORTS_KEPT = 16


class SlotState(enum.IntEnum):
    """Values match control.proto's SlotState."""

    EMPTY = 1
    WRITING = 2
    VERIFYING = 3
    COMPLETE = 4


@dataclass
class Slot:
    index: int
    arena: Arena | None = None
    state: SlotState = SlotState.EMPTY
    step: int = -1
    nbytes: int = 0
    generation: int = 0
    manifest: bytes = b""
    checksums: checksum.Checksums | None = None
    completed_at: float = 0.0
    pinned_until: float = 0.0  # monotonic: an export reads this snapshot; not to be reused

    def pinned(self, now: float) -> bool:
        return self.state is SlotState.COMPLETE and self.pinned_until > now


@dataclass
class RankState:
    rank: int
    local_rank: int = 0
    pid: int = 0
    slots: list[Slot] = field(default_factory=lambda: [Slot(i) for i in range(SLOTS_PER_RANK)])

    def complete_steps(self) -> set[int]:
        return {s.step for s in self.slots if s.state is SlotState.COMPLETE}

    @property
    def bytes(self) -> int:
        return sum(s.arena.capacity for s in self.slots if s.arena is not None)


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    pid: int


@dataclass
class Job:
    job_id: str
    world_size: int = 0  # 0: not known yet (re-adopted from disk, nobody registered)
    local_world_size: int = 0
    num_nodes: int = 1
    ranks: dict[int, RankState] = field(default_factory=dict)
    committed: int | None = None
    committed_at: float = 0.0
    aborted: dict[int, str] = field(default_factory=dict)
    waiters: list[tuple[int, Future[CommitState]]] = field(default_factory=list)
    last_error: str = ""
    started: dict[int, float] = field(default_factory=dict)  # step -> first begin_save (monotonic)
    clustered: bool = False  # commit needs every node (parity across nodes)
    layout: str = ""

    @property
    def protection(self) -> str:
        if self.clustered:
            return f"trainer crash and node loss: {self.layout}"
        if self.num_nodes <= 1:
            return "trainer crash (single node: the loss of this node is not covered)"
        return "trainer crash only (the job's nodes have not introduced themselves yet)"


@dataclass(frozen=True)
class SlotGrant:
    slot: int
    generation: int
    path: str
    capacity: int


@dataclass(frozen=True)
class OpenedSnapshot:
    slot: int
    path: str
    nbytes: int
    manifest: bytes
    verify_seconds: float


@dataclass(frozen=True)
class CommitState:
    committed: bool
    committed_step: int | None
