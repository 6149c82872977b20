"""The SMP's bookkeeping: jobs, ranks, double-buffered slots, and when a step is committed.

Slot rule (the invariant everything else leans on): a rank has two slots. A new save never goes
into the slot holding the job's committed step (or, before anything is committed, the rank's newest
complete step); it takes the other one. So the last snapshot every rank can restore is never
overwritten by the one in progress.

A step is complete on a rank once the rank committed its bytes and the SMP checksummed them; it is
committed once complete on every rank of the job this SMP serves. Slow work (checksums) runs on an
executor and is reported through futures; this module knows nothing of zmq or gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future
from dataclasses import replace
from threading import RLock
from typing import TYPE_CHECKING

from smp import checksum
from smp._proto import snapshot_pb2
from smp.config import format_size
from smp.errors import (
    Aborted,
    BadRequest,
    Busy,
    ChecksumMismatch,
    Conflict,
    NotFound,
    NotRegistered,
    SmpError,
)
from smp.jobs import (
    _ABORTS_KEPT,
    MAX_MANIFEST,
    MAX_SNAPSHOT,
    SLOTS_PER_RANK,
    CommitState,
    Job,
    OpenedSnapshot,
    RankInfo,
    RankState,
    Slot,
    SlotGrant,
    SlotState,
)
from smp.store import AdoptedSlot, Arena, Store, check_job_id

if TYPE_CHECKING:
    from smp.replication import Replication

logger = logging.getLogger(__name__)

# Observer of service events: (event, job id, value). Events and values:
#   "snapshot_saved" (bytes of a rank's step, once checksummed), "snapshot_committed" (seconds
#   from the step's first begin_save to its commit), "save_aborted" (1), "save_refused" (1: memory
#   limit, full store), "checksum_failure" (1). Called with the service lock held: a sink must
#   be quick and must not call back into the service.
EventSink = Callable[[str, str, float], None]


def _ignore(event: str, job_id: str, value: float) -> None:
    del event, job_id, value


class SnapshotService:
    def __init__(self, store: Store, executor: Executor, events: EventSink = _ignore) -> None:
        self.store = store
        self._executor = executor
        self._events = events
        self._lock = RLock()
        self._jobs: dict[str, Job] = {}
        self.replication: Replication | None = None  # set for multi-node protection

    def emit(self, event: str, job_id: str, value: float) -> None:
        self._events(event, job_id, value)

    # -- registration -------------------------------------------------------------------------

    def register(self, job_id: str, info: RankInfo) -> None:
        check_job_id(job_id)
        if info.world_size < 1 or info.rank >= info.world_size:
            raise BadRequest(f"rank {info.rank} is not within world size {info.world_size}")
        if info.local_world_size < 1 or info.local_rank >= info.local_world_size:
            raise BadRequest(
                f"local rank {info.local_rank} is not within local world size "
                f"{info.local_world_size}"
            )
        if info.num_nodes < 1 or info.node_rank >= info.num_nodes:
            raise BadRequest(f"node {info.node_rank} is not within {info.num_nodes} nodes")
        with self._lock:
            job = self._jobs.setdefault(job_id, Job(job_id))
            if job.world_size and job.world_size != info.world_size:
                logger.warning(
                    "job %s: world size changed from %d to %d",
                    job_id,
                    job.world_size,
                    info.world_size,
                )
            job.world_size = info.world_size
            job.local_world_size = info.local_world_size
            job.num_nodes = info.num_nodes
            state = job.ranks.setdefault(info.rank, RankState(info.rank))
            if state.pid != info.pid:  # a new process for the rank: its pins died with the old
                for slot in state.slots:
                    slot.pinned_until = 0.0
            state.local_rank, state.pid = info.local_rank, info.pid
            resolved = self._update_commit(job)
        _resolve(resolved)
        logger.info(
            "job %s: rank %d registered (pid %d, local %d/%d, node %d/%d)",
            job_id,
            info.rank,
            info.pid,
            info.local_rank,
            info.local_world_size,
            info.node_rank,
            info.num_nodes,
        )

    def _rank(self, job_id: str, rank: int) -> tuple[Job, RankState]:
        job = self._jobs.get(job_id)
        if job is None or rank not in job.ranks or not job.world_size:
            raise NotRegistered(
                f"rank {rank} of job {job_id!r} has not registered with this SMP (was the SMP "
                "restarted?): register again"
            )
        return job, job.ranks[rank]

    @staticmethod
    def _slot(state: RankState, index: int) -> Slot:
        if not 0 <= index < SLOTS_PER_RANK:
            raise BadRequest(f"slot {index} is out of range: slots are 0..{SLOTS_PER_RANK - 1}")
        return state.slots[index]

    # -- save ---------------------------------------------------------------------------------

    def begin_save(self, job_id: str, rank: int, step: int, nbytes: int) -> SlotGrant:
        if not 0 < nbytes <= MAX_SNAPSHOT:
            raise BadRequest(f"snapshot size {nbytes} is out of range 1..{MAX_SNAPSHOT}")
        with self._lock:
            job, state = self._rank(job_id, rank)
            slot = self._target_slot(job, state)
            context = f"saving step {step} of job {job_id!r} rank {rank} ({format_size(nbytes)})"
            # Allocation may replace the arena file: do it before touching the slot's state so
            # that a refusal (memory limit, full store) leaves everything stored as it was.
            try:
                path = self.store.arena_path(job_id, rank, slot.index)
                arena = self.store.allocate(path, nbytes, slot.arena, context)
            except SmpError:
                self._events("save_refused", job_id, 1)
                raise
            job.started.setdefault(step, time.monotonic())
            if slot.arena is not None and arena is slot.arena:
                self.store.drop_record(arena)  # its bytes are about to be overwritten
            slot.arena = arena
            slot.state, slot.step, slot.nbytes = SlotState.WRITING, step, nbytes
            slot.generation += 1
            slot.manifest, slot.checksums = b"", None
            if self.replication is not None:
                self.replication.on_begin(job_id, step)
            return SlotGrant(slot.index, slot.generation, str(arena.path), arena.capacity)

    @staticmethod
    def _free_slots(job: Job, state: RankState) -> list[Slot]:
        """Slots a new save may take: not the one to keep, not a pinned one."""
        complete = [s for s in state.slots if s.state is SlotState.COMPLETE]
        keep = next((s for s in complete if s.step == job.committed), None)
        if keep is None and complete:
            keep = max(complete, key=lambda s: s.step)
        now = time.monotonic()
        return [s for s in state.slots if s is not keep and not s.pinned(now)]

    def _target_slot(self, job: Job, state: RankState) -> Slot:
        free = self._free_slots(job, state)
        if not free:
            raise Busy(
                f"rank {state.rank} of job {job.job_id!r} has no free slot: one holds the step "
                "to keep, the other a step an export is reading (pinned); saves are skipped "
                "until the export finished"
            )
        # Prefer an empty slot, then the oldest step: a stale in-progress save is taken over.
        return min(free, key=lambda s: (s.state is not SlotState.EMPTY, s.step))

    def slots_free(self, job_id: str) -> bool:
        """Every local rank of the job has a slot a new save may take."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job is None or all(self._free_slots(job, r) for r in job.ranks.values())

    def pin(self, job_id: str, rank: int, step: int, pinned: bool, lease_s: float) -> None:
        """Keep the slot holding `step` from being reused (an export reads it), or release it."""
        with self._lock:
            _, state = self._rank(job_id, rank)
            slot = next(
                (x for x in state.slots if x.state is SlotState.COMPLETE and x.step == step),
                None,
            )
            if slot is None:
                if not pinned:
                    return  # nothing to release: the step is gone already
                raise NotFound(f"rank {rank} of job {job_id!r} holds no complete step {step}")
            slot.pinned_until = time.monotonic() + lease_s if pinned else 0.0

    def commit_save(
        self,
        job_id: str,
        rank: int,
        step: int,
        slot_index: int,
        generation: int,
        nbytes: int,
        manifest: bytes,
    ) -> None:
        with self._lock:
            _, state = self._rank(job_id, rank)
            slot = self._slot(state, slot_index)
            self._check_writer(slot, rank, step, generation)
            if not 0 < nbytes <= (slot.arena.capacity if slot.arena else 0):
                raise BadRequest(
                    f"commit of {nbytes} bytes does not fit slot {slot_index} "
                    f"({slot.arena.capacity if slot.arena else 0} bytes)"
                )
            if len(manifest) > MAX_MANIFEST:
                raise BadRequest(f"manifest of {len(manifest)} bytes exceeds {MAX_MANIFEST}")
            slot.state, slot.nbytes, slot.manifest = SlotState.VERIFYING, nbytes, manifest
        self._executor.submit(self._finish_commit, job_id, rank, slot, generation)

    @staticmethod
    def _check_writer(slot: Slot, rank: int, step: int, generation: int) -> None:
        if slot.generation != generation or slot.state is not SlotState.WRITING:
            raise Conflict(
                f"slot {slot.index} of rank {rank} is no longer yours (generation {generation}, "
                f"now {slot.generation}, {slot.state.name}): the save of step {step} was "
                "superseded; start a new save"
            )
        if slot.step != step:
            raise BadRequest(f"slot {slot.index} was granted for step {slot.step}, not {step}")

    def _finish_commit(self, job_id: str, rank: int, slot: Slot, generation: int) -> None:
        try:
            arena = slot.arena
            if arena is None:
                return
            sums = checksum.compute(arena.view(slot.nbytes))
        except Exception:
            logger.exception(
                "job %s rank %d: checksumming slot %d failed", job_id, rank, slot.index
            )
            return
        with self._lock:
            job = self._jobs.get(job_id)
            if (
                job is None
                or slot.generation != generation
                or slot.state is not SlotState.VERIFYING
            ):
                return  # superseded while we were hashing
            slot.state, slot.checksums, slot.completed_at = SlotState.COMPLETE, sums, time.time()
            self.store.write_record(arena, self._record(job_id, rank, slot, sums))
            resolved = self._update_commit(job)
        self._events("snapshot_saved", job_id, slot.nbytes)
        _resolve(resolved)
        if self.replication is not None:
            self.replication.on_rank_complete(job_id, slot.step)
            self.replication.check_protected(job_id, slot.step)
        logger.debug(
            "job %s rank %d: step %d complete in slot %d", job_id, rank, slot.step, slot.index
        )

    @staticmethod
    def _record(
        job_id: str, rank: int, slot: Slot, sums: checksum.Checksums
    ) -> snapshot_pb2.SlotRecord:
        return snapshot_pb2.SlotRecord(
            job_id=job_id,
            rank=rank,
            slot=slot.index,
            step=slot.step,
            nbytes=slot.nbytes,
            manifest=slot.manifest,
            checksums=sums.to_proto(),
            completed_unix=slot.completed_at,
        )

    def abort_save(
        self, job_id: str, rank: int, step: int, slot_index: int, generation: int, reason: str
    ) -> None:
        with self._lock:
            job, state = self._rank(job_id, rank)
            slot = self._slot(state, slot_index)
            self._check_writer(slot, rank, step, generation)
            slot.state = SlotState.EMPTY
            message = f"rank {rank} abandoned step {step}: {reason[:500]}"
            job.aborted[step] = job.last_error = message
            while len(job.aborted) > _ABORTS_KEPT:
                del job.aborted[min(job.aborted)]
            failed = [(s, f) for s, f in job.waiters if s == step]
            job.waiters = [(s, f) for s, f in job.waiters if s != step]
        logger.warning("job %s: %s", job_id, message)
        self._events("save_aborted", job_id, 1)
        for _, fut in failed:
            if not fut.done():
                fut.set_exception(Aborted(message))

    # -- commit -------------------------------------------------------------------------------

    def _update_commit(self, job: Job) -> list[tuple[Future[CommitState], CommitState]]:
        """Recompute the committed step; return the waiters it satisfies (resolve unlocked).

        For jobs protected across nodes the commit comes from the peers instead (commit_to).
        """
        if job.clustered:
            return []
        expected = job.world_size if job.num_nodes <= 1 else job.local_world_size
        if not job.ranks or (expected and len(job.ranks) < expected):
            return []
        common: set[int] | None = None
        for state in job.ranks.values():
            steps = state.complete_steps()
            common = steps if common is None else common & steps
        newest = max(common) if common else None
        if newest is None or newest == job.committed:
            return []
        return self._commit(job, newest)

    def _commit(self, job: Job, step: int) -> list[tuple[Future[CommitState], CommitState]]:
        """Record `step` as the job's committed step (lock held); return the satisfied waiters."""
        job.committed, job.committed_at = step, time.time()
        started = job.started.get(step)
        job.started = {s: t for s, t in job.started.items() if s > step}
        if started is not None:
            self._events("snapshot_committed", job.job_id, time.monotonic() - started)
        state_now = CommitState(True, step)
        done = [(f, state_now) for s, f in job.waiters if s <= step]
        job.waiters = [(s, f) for s, f in job.waiters if s > step]
        return done

    # -- hooks for replication across nodes -----------------------------------------------------

    def set_clustered(self, job_id: str, clustered: bool, layout: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotRegistered(f"job {job_id!r} has no registered rank on this SMP")
            job.clustered, job.layout = clustered, layout

    def committed(self, job_id: str) -> int | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.committed if job is not None else None

    def node_parts(
        self, job_id: str, step: int
    ) -> tuple[list[memoryview], list[snapshot_pb2.SlotRecord]] | None:
        """This node's blob for `step` (its ranks' slots in rank order), if all ranks have it."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or len(job.ranks) < max(job.local_world_size, 1):
                return None
            parts, records = [], []
            for rank in sorted(job.ranks):
                slot = next(
                    (
                        x
                        for x in job.ranks[rank].slots
                        if x.state is SlotState.COMPLETE and x.step == step
                    ),
                    None,
                )
                if slot is None or slot.arena is None or slot.checksums is None:
                    return None
                parts.append(slot.arena.view(slot.nbytes))
                records.append(self._record(job_id, rank, slot, slot.checksums))
            return parts, records

    def commit_to(self, job_id: str, step: int) -> bool:
        """Record `step` as committed by every node; False if nothing changed."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or (job.committed is not None and step <= job.committed):
                return False
            done = self._commit(job, step)
        _resolve(done)
        return True

    def install(
        self, job_id: str, step: int, records: list[snapshot_pb2.SlotRecord], blob: memoryview
    ) -> None:
        """Put a rebuilt node's slots in place, checking every chunk checksum first."""
        offset = 0
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotRegistered(f"job {job_id!r} has no registered rank on this SMP")
            for rec in sorted(records, key=lambda r: r.rank):
                data = blob[offset : offset + rec.nbytes]
                offset += rec.nbytes
                expected = checksum.Checksums.from_proto(rec.checksums)
                if checksum.mismatches(data, expected):
                    raise ChecksumMismatch(
                        f"rebuilt step {step} of job {job_id!r} rank "
                        f"{rec.rank} does not match its checksums"
                    )
                state = job.ranks.setdefault(rec.rank, RankState(rec.rank))
                slot = self._target_slot(job, state)
                path = self.store.arena_path(job_id, rec.rank, slot.index)
                context = f"rebuilding step {step} of job {job_id!r} rank {rec.rank}"
                slot.arena = self.store.allocate(path, rec.nbytes, slot.arena, context)
                slot.arena.view(rec.nbytes)[:] = data
                slot.generation += 1
                slot.state, slot.step, slot.nbytes = SlotState.COMPLETE, step, rec.nbytes
                slot.manifest, slot.checksums = rec.manifest, expected
                slot.completed_at = time.time()
                self.store.write_record(slot.arena, self._record(job_id, rec.rank, slot, expected))

    def wait_committed(self, job_id: str, step: int) -> Future[CommitState]:
        fut: Future[CommitState] = Future()
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotFound(f"job {job_id!r} is unknown to this SMP")
            if job.committed is not None and job.committed >= step:
                fut.set_result(CommitState(True, job.committed))
            elif step in job.aborted:
                fut.set_exception(Aborted(job.aborted[step]))
            else:
                job.waiters.append((step, fut))
        return fut

    def commit_state(self, job_id: str) -> CommitState:
        with self._lock:
            job = self._jobs.get(job_id)
            committed = job.committed if job is not None else None
            return CommitState(False, committed)

    def cancel_wait(self, job_id: str, fut: Future[CommitState]) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.waiters = [(s, f) for s, f in job.waiters if f is not fut]

    # -- restore ------------------------------------------------------------------------------

    def list_steps(self, job_id: str, rank: int) -> tuple[list[int], int | None]:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or rank not in job.ranks:
                return [], None
            return sorted(job.ranks[rank].complete_steps(), reverse=True), job.committed

    def open_snapshot(
        self, job_id: str, rank: int, step: int, verify: bool = True
    ) -> Future[OpenedSnapshot]:
        with self._lock:
            job = self._jobs.get(job_id)
            state = job.ranks.get(rank) if job is not None else None
            slot = (
                next(
                    (s for s in state.slots if s.state is SlotState.COMPLETE and s.step == step),
                    None,
                )
                if state is not None
                else None
            )
            if state is None or slot is None or slot.arena is None:
                held = sorted(state.complete_steps()) if state is not None else []
                raise NotFound(
                    f"job {job_id!r} rank {rank} holds no complete snapshot of step "
                    f"{step} (complete steps held: {held})"
                )
            opened = OpenedSnapshot(
                slot.index, str(slot.arena.path), slot.nbytes, slot.manifest, 0.0
            )
            generation, arena, expected = slot.generation, slot.arena, slot.checksums
        if not verify or expected is None:
            done: Future[OpenedSnapshot] = Future()
            done.set_result(opened)
            return done
        return self._executor.submit(
            self._verify, job_id, rank, slot, generation, arena, expected, opened
        )

    def _verify(
        self,
        job_id: str,
        rank: int,
        slot: Slot,
        generation: int,
        arena: Arena,
        expected: checksum.Checksums,
        opened: OpenedSnapshot,
    ) -> OpenedSnapshot:
        start = time.perf_counter()
        bad = checksum.mismatches(arena.view(opened.nbytes), expected)
        elapsed = time.perf_counter() - start
        if not bad:
            return OpenedSnapshot(opened.slot, opened.path, opened.nbytes, opened.manifest, elapsed)
        with self._lock:
            if slot.generation == generation:
                slot.state = SlotState.EMPTY  # never offer these bytes again
                self.store.drop_record(arena)
            job = self._jobs.get(job_id)
            if job is not None:
                job.last_error = f"checksum mismatch in step {slot.step} of rank {rank}"
        self._events("checksum_failure", job_id, 1)
        size = expected.chunk_size
        ranges = ", ".join(f"{i * size}-{min((i + 1) * size, opened.nbytes)}" for i in bad[:5])
        raise ChecksumMismatch(
            f"step {slot.step} of job {job_id!r} rank {rank}: {len(bad)} of "
            f"{len(expected.values)} chunks do not match their checksums (bytes {ranges}"
            f"{', ...' if len(bad) > 5 else ''}); the snapshot was dropped: restore an older step"
        )

    # -- adoption and status ------------------------------------------------------------------

    def adopt(self, found: Iterable[AdoptedSlot]) -> int:
        """Take over arenas of an earlier daemon; returns how many complete snapshots were kept."""
        kept = 0
        with self._lock:
            for item in found:
                if item.slot >= SLOTS_PER_RANK:
                    continue
                job = self._jobs.setdefault(item.job_id, Job(item.job_id))
                slot = job.ranks.setdefault(item.rank, RankState(item.rank)).slots[item.slot]
                slot.arena = item.arena
                rec = item.record
                if rec is None or rec.job_id != item.job_id or rec.rank != item.rank:
                    continue
                try:
                    slot.checksums = checksum.Checksums.from_proto(rec.checksums)
                except ValueError:
                    continue
                slot.state, slot.step, slot.nbytes = SlotState.COMPLETE, rec.step, rec.nbytes
                slot.manifest, slot.completed_at = rec.manifest, rec.completed_unix
                kept += 1
            for job in self._jobs.values():
                self._update_commit(job)
        return kept

    def jobs(self) -> list[Job]:
        """A consistent copy of the jobs for status reporting."""
        with self._lock:
            return [
                replace(
                    j,
                    ranks={
                        r: replace(x, slots=[replace(slot) for slot in x.slots])
                        for r, x in j.ranks.items()
                    },
                    aborted=dict(j.aborted),
                    waiters=[],
                    started={},
                )
                for j in self._jobs.values()
            ]


def _resolve(done: list[tuple[Future[CommitState], CommitState]]) -> None:
    for fut, value in done:
        if not fut.done():
            fut.set_result(value)
