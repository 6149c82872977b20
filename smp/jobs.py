"""What the SMP holds, as plain data: jobs, their ranks, each rank's two slots, and the small
values the service hands out (grants, opened snapshots, commit states). No locking and no I/O:
`SnapshotService` owns these objects and guards them with its lock.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from smp import checksum
from smp.store import Arena

SLOTS_PER_RANK = 2
MAX_MANIFEST = 64 << 20
MAX_SNAPSHOT = 1 << 48
ABORTS_KEPT = 16
MAX_JOBS = 1024  # jobs one SMP keeps: a registration beyond is refused (BUSY)
MAX_WAITERS = 4096  # pending commit waits per job (a job waits with one per rank)


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
    writer: tuple[int, int] = (0, 0)  # (session, pid) of the grant's holder while WRITING
    world_size: int = 0  # the job's world size when the step was saved

    def pinned(self, now: float) -> bool:
        return self.state is SlotState.COMPLETE and self.pinned_until > now

    def clear(self) -> None:
        """Nothing valid in the slot any more (its arena stays, for reuse)."""
        self.state, self.step, self.nbytes = SlotState.EMPTY, -1, 0
        self.manifest, self.checksums, self.pinned_until = b"", None, 0.0


@dataclass
class RankState:
    rank: int
    local_rank: int = 0
    pid: int = 0
    session: int = 0  # the registration whose requests are served; others are superseded
    slots: list[Slot] = field(default_factory=lambda: [Slot(i) for i in range(SLOTS_PER_RANK)])

    def complete_steps(self) -> set[int]:
        return {s.step for s in self.slots if s.state is SlotState.COMPLETE}

    def complete(self, step: int) -> Slot | None:
        return next(
            (s for s in self.slots if s.state is SlotState.COMPLETE and s.step == step), None
        )

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
    session: int = 0


@dataclass
class Persistence:
    """The job's durable tier as its ranks last reported it (the SMP writes nothing itself)."""

    target: str = ""
    step: int | None = None  # newest step complete in the target
    completed_at: float = 0.0  # wall clock
    bytes_per_s: float = 0.0
    failures: int = 0
    error: str = ""  # the last round's failure; "" after a success


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
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)  # step -> (code, message)
    waiters: list[tuple[int, Future[CommitState]]] = field(default_factory=list)
    last_error: str = ""
    started: dict[int, float] = field(default_factory=dict)  # step -> first begin_save (monotonic)
    clustered: bool = False  # commit needs every node (parity across nodes)
    layout: str = ""
    # Clustered jobs: node -> the steps it reported protected (this node's own included).
    protected_by: dict[int, set[int]] = field(default_factory=dict)
    degraded: str = ""  # why this node does not hold the committed step protected, if so
    # Ranks held here that are not this node's any more (the job was renumbered or resharded):
    # kept until the job's next commit, never part of this node's blob or its commits.
    foreign: set[int] = field(default_factory=set)
    key: bytes | None = None  # the job key's digest it is bound to (smp.access); None: unbound
    persistence: Persistence | None = None  # None: the job persists nowhere (or has not said)
    finished: int | None = None  # the step the job ended at (its ranks said so); a save clears it

    def live_ranks(self) -> list[RankState]:
        return [self.ranks[r] for r in sorted(self.ranks) if r not in self.foreign]

    last_active: float = field(default_factory=time.monotonic)

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
    degraded: str = ""


# Observer of service events: (event, job id, value). Events and values:
#   "snapshot_saved" (bytes of a rank's step, once checksummed), "snapshot_committed" (seconds
#   from the step's first begin_save to its commit), "save_aborted" (1), "save_refused" (1: memory
#   limit, full store), "checksum_failure" (1), "parity_sent"/"parity_received" (bytes),
#   "rebuild" (seconds). Called with the table's lock held: a sink must be quick and must not
#   call back into the SMP.
EventSink = Callable[[str, str, float], None]


def ignore_events(event: str, job_id: str, value: float) -> None:
    del event, job_id, value


class JobTable:
    """Every job the SMP knows, and the one lock that guards them (and their ranks and slots).
    Shared by the local service and the cross-node side's view of it."""

    def __init__(self, events: EventSink = ignore_events) -> None:
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.events = events

    def get(self, job_id: str) -> Job | None:
        """The job (lock held by the caller), marked active now."""
        job = self.jobs.get(job_id)
        if job is not None:
            job.last_active = time.monotonic()
        return job

    def snapshot(self) -> list[Job]:
        """A consistent copy of the jobs, for status reporting."""
        with self.lock:
            return [
                replace(
                    j,
                    ranks={
                        r: replace(x, slots=[replace(slot) for slot in x.slots])
                        for r, x in j.ranks.items()
                    },
                    aborted=dict(j.aborted),
                    failed=dict(j.failed),
                    waiters=[],
                    started={},
                    protected_by={},
                    foreign=set(j.foreign),
                    persistence=replace(j.persistence) if j.persistence else None,
                )
                for j in self.jobs.values()
            ]
