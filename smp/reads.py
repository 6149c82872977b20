"""What restores and exports read from the SMP's local snapshots: the steps held, a snapshot
opened (its checksums verified first), pins that keep a slot from reuse while an export reads it,
and where each snapshot of a job is (for a job laid out anew).

A snapshot whose bytes no longer match their checksums is dropped at once and never offered again.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor, Future

from smp import checksum
from smp.errors import ChecksumMismatch, NotFound
from smp.jobs import Job, JobTable, OpenedSnapshot, Slot, SlotState
from smp.store import Arena, Store


class SnapshotReads:
    def __init__(self, table: JobTable, store: Store, executor: Executor) -> None:
        self.store = store
        self._executor = executor
        self._table = table
        self._events = table.events
        self._lock = table.lock
        self._jobs = table.jobs

    def _job(self, job_id: str) -> Job | None:
        return self._table.get(job_id)

    def list_steps(self, job_id: str, rank: int) -> tuple[list[int], int | None, list[int]]:
        """(complete steps newest first, the job's committed step, world size of each step)."""
        with self._lock:
            job = self._job(job_id)
            if job is None or rank not in job.ranks:
                return [], None, []
            held = sorted(
                (s for s in job.ranks[rank].slots if s.state is SlotState.COMPLETE),
                key=lambda s: s.step,
                reverse=True,
            )
            return [s.step for s in held], job.committed, [s.world_size for s in held]

    def finished(self, job_id: str) -> int | None:
        """The step the job ended at, if its ranks said it finished."""
        with self._lock:
            job = self._job(job_id)
            return job.finished if job is not None else None

    def open_snapshot(
        self, job_id: str, rank: int, step: int, verify: bool = True
    ) -> Future[OpenedSnapshot]:
        with self._lock:
            job = self._job(job_id)
            state = job.ranks.get(rank) if job is not None else None
            slot = state.complete(step) if state is not None else None
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
            self._verify, job_id, rank, step, slot, generation, arena, expected, opened
        )

    def _verify(
        self,
        job_id: str,
        rank: int,
        step: int,
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
                slot.clear()  # never offer these bytes again
                self.store.drop_record(arena)
            job = self._jobs.get(job_id)
            if job is not None:
                job.last_error = f"checksum mismatch in step {step} of rank {rank}"
        self._events("checksum_failure", job_id, 1)
        size = expected.chunk_size
        ranges = ", ".join(f"{i * size}-{min((i + 1) * size, opened.nbytes)}" for i in bad[:5])
        raise ChecksumMismatch(
            f"step {step} of job {job_id!r} rank {rank}: {len(bad)} of "
            f"{len(expected.values)} chunks do not match their checksums (bytes {ranges}"
            f"{', ...' if len(bad) > 5 else ''}); the snapshot was dropped: restore an older step"
        )

    def locate(self, job_id: str) -> tuple[list[tuple[int, int, int, int]], int | None]:
        """(rank, step, world size, bytes) of every complete snapshot held here, and the
        committed step."""
        with self._lock:
            job = self._job(job_id)
            if job is None:
                return [], None
            held = [
                (rank, s.step, s.world_size, s.nbytes)
                for rank, state in sorted(job.ranks.items())
                for s in state.slots
                if s.state is SlotState.COMPLETE
            ]
            return held, job.committed

    def pin(self, job_id: str, rank: int, step: int, pinned: bool, lease_s: float) -> None:
        """Keep the slot holding `step` from being reused (an export reads it), or release it."""
        with self._lock:
            job = self._job(job_id)
            state = job.ranks.get(rank) if job is not None else None
            slot = state.complete(step) if state is not None else None
            if slot is None:
                if not pinned:
                    return  # nothing to release: the step is gone already
                raise NotFound(f"rank {rank} of job {job_id!r} holds no complete step {step}")
            slot.pinned_until = time.monotonic() + lease_s if pinned else 0.0
