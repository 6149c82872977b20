"""The SMP's local snapshots, as the control server serves them: registration, saves (slots,
checksums), commit waits, forgetting a job; what restores and exports read is in `smp.reads`.

A step is complete on a rank once the rank committed its bytes and the SMP checksummed them; when
it is committed is decided in `commits`. Slow work (checksums) runs on an executor and is reported
through futures. The cross-node side hears of saves through a `SnapshotListener` and sees the
snapshots through `local.LocalSnapshots`; this module imports nothing of it, of zmq or of gRPC.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor, Future
from typing import Protocol

from smp import checksum, commits, slots
from smp.access import Access
from smp.config import format_size
from smp.defaults import InvalidJobId, check_job_id
from smp.errors import (
    Aborted,
    BadRequest,
    Busy,
    Internal,
    NotFound,
    SmpError,
)
from smp.jobs import (
    MAX_JOBS,
    MAX_MANIFEST,
    MAX_SNAPSHOT,
    MAX_WAITERS,
    CommitState,
    Job,
    JobTable,
    Persistence,
    RankInfo,
    RankState,
    Slot,
    SlotGrant,
    SlotState,
)
from smp.reads import SnapshotReads
from smp.store import Store

logger = logging.getLogger(__name__)


class SnapshotListener(Protocol):
    """What the cross-node side hears of local saves (called without the service lock)."""

    def on_begin(self, job_id: str, step: int) -> None: ...
    def on_rank_complete(self, job_id: str, step: int) -> None: ...
    def on_rewind(self, job_id: str, step: int) -> None: ...
    def on_forget(self, job_id: str) -> None: ...


def valid_job_id(job_id: str) -> str:
    try:
        return check_job_id(job_id)
    except InvalidJobId as exc:
        raise BadRequest(str(exc)) from None


class SnapshotService(SnapshotReads):
    def __init__(
        self, table: JobTable, store: Store, executor: Executor, access: Access | None = None
    ) -> None:
        super().__init__(table, store, executor)
        self._listener: SnapshotListener | None = None
        self.access = access or Access(b"", require_key=False)

    def set_listener(self, listener: SnapshotListener) -> None:
        """Wired once by the daemon: the cross-node coordinator of a multi-node SMP."""
        self._listener = listener

    def emit(self, event: str, job_id: str, value: float) -> None:
        self._events(event, job_id, value)

    # -- registration -------------------------------------------------------------------------

    def admit(self, job_id: str, key: bytes, admin: bytes) -> None:
        """May a request presenting `key` (and `admin`) act for the job? (Registrations are
        checked by `register`.) Raises NOT_REGISTERED, the same for an absent job."""
        with self._lock:
            job = self._jobs.get(job_id)
            self.access.check(job_id, key, admin, job.key if job is not None else None)

    def register(self, job_id: str, info: RankInfo, key: bytes = b"") -> None:
        valid_job_id(job_id)
        slots.check_rank_info(info)
        with self._lock:
            known = self._jobs.get(job_id)
            digest = self.access.registering(job_id, key, known.key if known else None)
            if known is None and len(self._jobs) >= MAX_JOBS:
                raise Busy(
                    f"this SMP holds {len(self._jobs)} jobs, the most it keeps: forget finished "
                    "ones (`smp forget JOB`, or --job-ttl) before starting another"
                )
            job = self._jobs.setdefault(job_id, Job(job_id))
            if job.key is None:
                job.key = digest
                self.store.write_job_key(job_id, digest)
                if not digest:
                    logger.warning(
                        "job %s registered without a job key: any process that can open this "
                        "SMP's socket may act for it (set ECSNAP_JOB_KEY to keep jobs apart)",
                        job_id,
                    )
            job.last_active = time.monotonic()
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
            job.foreign.discard(info.rank)  # it runs here (again)
            state.local_rank, state.pid, state.session = info.local_rank, info.pid, info.session
            resolved = [] if job.clustered else commits.update(job, self._events)
        commits.resolve(resolved)
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

    # -- save ---------------------------------------------------------------------------------

    def begin_save(
        self, job_id: str, rank: int, step: int, nbytes: int, session: int = 0
    ) -> SlotGrant:
        if not 0 < nbytes <= MAX_SNAPSHOT:
            raise BadRequest(f"snapshot size {nbytes} is out of range 1..{MAX_SNAPSHOT}")
        with self._lock:
            job = self._job(job_id)
            state = slots.rank_of(job, job_id, rank)
            assert job is not None  # rank_of checked it
            slots.check_session(state, job_id, session)
            rewound = slots.is_rewind(job, state, step)
            if rewound:
                slots.rewind(self.store, job, state, step)
            slot = slots.target_slot(job, state)
            context = f"saving step {step} of job {job_id!r} rank {rank} ({format_size(nbytes)})"
            # Allocation may replace the arena file: do it before touching the slot's state so
            # that a refusal (memory limit, full store) leaves everything stored as it was.
            try:
                path = self.store.arena_path(job_id, rank, slot.index)
                fresh = slots.writer_may_linger(slot, session)
                arena = self.store.allocate(path, nbytes, slot.arena, context, fresh=fresh)
            except SmpError:
                self._events("save_refused", job_id, 1)
                raise
            job.started.setdefault(step, time.monotonic())
            if job.finished is not None:  # it trains again: no longer finished
                job.finished = None
                self.store.write_finished(job_id, None)
            if slot.arena is not None and arena is slot.arena:
                self.store.drop_record(arena)  # its bytes are about to be overwritten
            slot.arena = arena
            slot.clear()
            slot.state, slot.step, slot.nbytes = SlotState.WRITING, step, nbytes
            slot.generation += 1
            slot.writer, slot.world_size = (session, state.pid), job.world_size
            grant = SlotGrant(slot.index, slot.generation, str(arena.path), arena.capacity)
        if self._listener is not None:
            if rewound:
                self._listener.on_rewind(job_id, step)
            self._listener.on_begin(job_id, step)
        return grant

    def commit_save(
        self,
        job_id: str,
        rank: int,
        step: int,
        slot_index: int,
        generation: int,
        nbytes: int,
        manifest: bytes,
        session: int = 0,
    ) -> None:
        with self._lock:
            state = slots.rank_of(self._job(job_id), job_id, rank)
            slots.check_session(state, job_id, session)
            slot = slots.slot_at(state, slot_index)
            slots.check_writer(slot, rank, step, generation)
            if not 0 < nbytes <= (slot.arena.capacity if slot.arena else 0):
                raise BadRequest(
                    f"commit of {nbytes} bytes does not fit slot {slot_index} "
                    f"({slot.arena.capacity if slot.arena else 0} bytes)"
                )
            if len(manifest) > MAX_MANIFEST:
                raise BadRequest(f"manifest of {len(manifest)} bytes exceeds {MAX_MANIFEST}")
            slot.state, slot.nbytes, slot.manifest = SlotState.VERIFYING, nbytes, manifest
        self._executor.submit(self._finish_commit, job_id, rank, slot, generation)

    def _finish_commit(self, job_id: str, rank: int, slot: Slot, generation: int) -> None:
        try:
            if slot.arena is None:
                raise Internal("the slot lost its arena")
            sums = checksum.compute(slot.arena.view(slot.nbytes))
            with self._lock:
                job = self._jobs.get(job_id)
                if (
                    job is None
                    or slot.generation != generation
                    or slot.state is not SlotState.VERIFYING
                ):
                    return  # superseded while we were hashing
                slot.state, slot.checksums, slot.completed_at = (
                    SlotState.COMPLETE,
                    sums,
                    time.time(),
                )
                self.store.write_record(slot.arena, slots.record(job_id, rank, slot))
                resolved = [] if job.clustered else commits.update(job, self._events)
                step = slot.step
        except Exception as exc:
            logger.exception("job %s rank %d: finishing the save failed", job_id, rank)
            self._fail_slot(job_id, rank, slot, generation, exc)
            return
        self._events("snapshot_saved", job_id, slot.nbytes)
        commits.resolve(resolved)
        if self._listener is not None:
            self._listener.on_rank_complete(job_id, step)
        logger.debug("job %s rank %d: step %d complete in slot %d", job_id, rank, step, slot.index)

    def _fail_slot(
        self, job_id: str, rank: int, slot: Slot, generation: int, exc: Exception
    ) -> None:
        """A commit that cannot finish frees its slot and fails the step (never a stuck slot)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or slot.generation != generation:
                return
            step = slot.step
            slot.clear()
            error = Internal(f"rank {rank} could not finish step {step} on this SMP: {exc}")
            resolved = commits.fail(job, step, error)
            self._events("save_aborted", job_id, 1)
        commits.resolve(resolved)

    def abort_save(
        self,
        job_id: str,
        rank: int,
        step: int,
        slot_index: int,
        generation: int,
        reason: str,
        session: int = 0,
    ) -> None:
        with self._lock:
            job = self._job(job_id)
            state = slots.rank_of(job, job_id, rank)
            assert job is not None
            slots.check_session(state, job_id, session)
            slot = slots.slot_at(state, slot_index)
            slots.check_writer(slot, rank, step, generation)
            slot.clear()
            message = f"rank {rank} abandoned step {step}: {reason[:500]}"
            resolved = commits.fail(job, step, Aborted(message))
        logger.warning("job %s: %s", job_id, message)
        self._events("save_aborted", job_id, 1)
        commits.resolve(resolved)

    def finish(self, job_id: str, step: int) -> None:
        """The job ended at `step` (committed): a relaunch must not silently train nothing."""
        with self._lock:
            job = self._job(job_id)
            if job is None or job.committed is None or job.committed < step:
                raise NotFound(
                    f"job {job_id!r} has no committed step {step} here: only a committed step "
                    "can end a job (wait for the last save with wait_protected() first)"
                )
            job.finished = step
            self.store.write_finished(job_id, step)
        logger.info("job %s: finished at step %d", job_id, step)

    def slots_free(self, job_id: str) -> bool:
        """Every local rank of the job has a slot a new save may take."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job is None or all(slots.free_slots(job, r) for r in job.live_ranks())

    def retain(self, job_id: str, ranks: list[int]) -> None:
        """The job's ranks on this node are `ranks`: the others held here go at its next
        commit."""
        with self._lock:
            job = self._job(job_id)
            if job is not None:
                job.foreign = set(job.ranks) - set(ranks)

    def report_persist(
        self, job_id: str, target: str, step: int | None, rate: float, error: str
    ) -> None:
        """A persistence round of the job ended: `step` is its newest complete persisted step
        (None: none yet), written at `rate` bytes/s; `error` says why the round failed."""
        with self._lock:
            job = self._job(job_id)
            if job is None:
                raise NotFound(f"job {job_id!r} is unknown to this SMP")
            p = job.persistence = job.persistence or Persistence()
            p.target = target
            if step is not None and step != p.step:
                p.step, p.completed_at = step, time.time()
                if not error:
                    p.bytes_per_s = rate
            if error:
                p.failures += 1
                if p.error != error:
                    logger.error("job %s: persisting to %s failed: %s", job_id, target, error)
            elif p.error:
                logger.warning("job %s: persisting to %s works again", job_id, target)
            p.error = error

    # -- commit -------------------------------------------------------------------------------

    def wait_committed(self, job_id: str, step: int) -> Future[CommitState]:
        with self._lock:
            job = self._job(job_id)
            if job is None:
                raise NotFound(f"job {job_id!r} is unknown to this SMP")
            if len(job.waiters) >= MAX_WAITERS:
                raise Busy(
                    f"job {job_id!r} has {len(job.waiters)} commit waits pending, the most "
                    "this SMP keeps: wait for those to answer"
                )
            return commits.wait(job, step)

    def commit_state(self, job_id: str) -> CommitState:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return CommitState(False, None)
            return CommitState(False, job.committed, job.degraded)

    def cancel_wait(self, job_id: str, fut: Future[CommitState]) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.waiters = [(s, f) for s, f in job.waiters if f is not fut]

    # -- forgetting ---------------------------------------------------------------------------

    def forget(self, job_id: str) -> int:
        """Delete every snapshot of the job here and free its memory; returns the bytes freed
        (parity the cross-node side holds is freed by its listener)."""
        valid_job_id(job_id)
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is None:
                return 0
            freed = 0
            for state in job.ranks.values():
                for slot in state.slots:
                    if slot.arena is not None:
                        freed += slot.arena.capacity
                        self.store.free(slot.arena)
                        slot.arena = None
            waiters = [(f, NotFound(f"job {job_id!r} was forgotten")) for _, f in job.waiters]
        commits.resolve(waiters)  # type: ignore[arg-type]
        if self._listener is not None:
            self._listener.on_forget(job_id)
        self.store.forget_job(job_id)
        logger.warning("job %s: forgotten, %s freed", job_id, format_size(freed))
        return freed

    def idle_jobs(self, ttl_s: float) -> list[str]:
        now = time.monotonic()
        with self._lock:
            return [j.job_id for j in self._jobs.values() if now - j.last_active > ttl_s]

    def touch(self, job_id: str) -> None:
        with self._lock:
            self._job(job_id)

    def jobs(self) -> list[Job]:
        """A consistent copy of the jobs for status reporting."""
        return self._table.snapshot()
