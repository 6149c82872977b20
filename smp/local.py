"""The cross-node side's view of the local snapshots (a narrow interface over the job table).

What protection across nodes needs from this node: its blob of a step (the ranks' slots back to
back), the committed step, "node n protected step s" (the commit itself is decided in `commits`),
failures of a step, a relaunched incarnation, and a place to install a rebuilt node's slots. It
never imports the cross-node code; the cross-node code reaches the local side only through this.
"""

from __future__ import annotations

import logging

from smp import checksum, commits, slots
from smp._proto import snapshot_pb2
from smp.errors import ChecksumMismatch, NotRegistered, SmpError
from smp.jobs import SLOTS_PER_RANK, Job, JobTable, RankState, SlotState
from smp.store import AdoptedSlot, Store

logger = logging.getLogger(__name__)


class LocalSnapshots:
    def __init__(self, table: JobTable, store: Store) -> None:
        self.store = store
        self._table = table
        self._lock = table.lock
        self._jobs = table.jobs
        self._events = table.events

    def emit(self, event: str, job_id: str, value: float) -> None:
        self._events(event, job_id, value)

    # -- the job across nodes ------------------------------------------------------------------

    def set_clustered(self, job_id: str, clustered: bool, layout: str, num_nodes: int) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                job = self._jobs[job_id] = Job(job_id)  # re-adopted before any rank registered
            job.clustered, job.layout = clustered, layout
            job.num_nodes = max(job.num_nodes, num_nodes)

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
            live = job.live_ranks() if job is not None else []
            if job is None or len(live) < max(job.local_world_size, 1):
                return None
            parts, records = [], []
            for state in live:
                slot = state.complete(step)
                if slot is None or slot.arena is None or slot.checksums is None:
                    return None
                parts.append(slot.arena.view(slot.nbytes))
                records.append(slots.record(job_id, state.rank, slot))
            return parts, records

    def holds(self, job_id: str) -> bool:
        """Does this SMP hold any complete snapshot of the job?"""
        with self._lock:
            job = self._jobs.get(job_id)
            return job is not None and any(s.complete_steps() for s in job.ranks.values())

    def slot_of(
        self, job_id: str, rank: int, step: int
    ) -> tuple[snapshot_pb2.SlotRecord, memoryview] | None:
        """Rank `rank`'s complete snapshot of `step` held here (any rank: a peer fetches it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            state = job.ranks.get(rank) if job is not None else None
            slot = state.complete(step) if state is not None else None
            if slot is None or slot.arena is None or slot.checksums is None:
                return None
            return slots.record(job_id, rank, slot), slot.arena.view(slot.nbytes)

    def note_protected(self, job_id: str, node: int, step: int) -> bool:
        """Node `node` holds `step` protected; True when that committed a step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            commits.note_protected(job, node, step)
            before = job.committed
            resolved = commits.update(job, self._events)
            if job.committed != before and job.foreign:
                slots.drop_foreign(self.store, job)
        commits.resolve(resolved)
        return bool(resolved) or (job.committed is not None and job.committed >= step)

    def adopt_commit(self, job_id: str, step: int, nodes: int) -> None:
        """A committed step known from before (a re-adopted or rebuilt node): every node of the
        job holds it protected."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            for node in range(nodes):
                commits.note_protected(job, node, step)
            resolved = commits.update(job, self._events)
        commits.resolve(resolved)

    def fail_step(self, job_id: str, step: int, error: SmpError) -> None:
        """`step` cannot commit anywhere (e.g. a parity holder refused it): waiters hear why."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            if step in job.failed:
                return  # heard already (from another node, or from this one's own sender)
            resolved = commits.fail(job, step, error)
            self._events("step_failed", job_id, 1)
        logger.warning("job %s: step %d failed: %s", job_id, step, error)
        commits.resolve(resolved)

    def failure(self, job_id: str, step: int) -> tuple[str, str] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else job.failed.get(step)

    def restart(self, job_id: str, committed: int | None) -> None:
        """The job was relaunched: whatever it had in flight after `committed` is void."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                commits.rewind(job, 0 if committed is None else committed + 1)

    def restart_layout(self, job_id: str) -> None:
        """The job's nodes were laid out anew (renumbered, or another count): protection
        reports of the old layout mean nothing for the new one."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None:
                job.protected_by.clear()

    def set_degraded(self, job_id: str, why: str) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.degraded != why:
                job.degraded = why
                if why:
                    logger.warning("job %s: protection degraded: %s", job_id, why)

    # -- installing a rebuilt node --------------------------------------------------------------

    def install_targets(
        self, job_id: str, step: int, records: list[snapshot_pb2.SlotRecord]
    ) -> list[memoryview]:
        """A rebuild writes straight into the slots it will install: take one slot per rank
        (never the kept one; the one already holding `step`, when a rank still has it: the rebuild
        writes the same bytes) and return their bytes, in rank order."""
        out = []
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise NotRegistered(f"job {job_id!r} has no registered rank on this SMP")
            for rec in sorted(records, key=lambda r: r.rank):
                state = job.ranks.setdefault(rec.rank, RankState(rec.rank))
                slot = state.complete(step) or slots.target_slot(job, state)
                if slot.arena is not None:
                    self.store.drop_record(slot.arena)
                path = self.store.arena_path(job_id, rec.rank, slot.index)
                context = f"rebuilding step {step} of job {job_id!r} rank {rec.rank}"
                slot.arena = self.store.allocate(path, rec.nbytes, slot.arena, context)
                slot.clear()
                slot.state, slot.step, slot.nbytes = SlotState.WRITING, step, rec.nbytes
                slot.generation += 1
                out.append(slot.arena.view(rec.nbytes))
        return out

    def finish_install(
        self, job_id: str, step: int, records: list[snapshot_pb2.SlotRecord], ok: bool
    ) -> None:
        """The rebuilt bytes are in place (ok: every rank's checksums are checked here) or the
        rebuild failed (the slots taken are freed). Nothing partial is ever served."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            taken = []
            for rec in records:
                state = job.ranks.get(rec.rank)
                slot = next(
                    (
                        s
                        for s in (state.slots if state else [])
                        if s.state is SlotState.WRITING and s.step == step
                    ),
                    None,
                )
                if slot is not None:
                    taken.append((rec, slot))
        bad = []
        if ok:
            for rec, slot in taken:
                sums = checksum.Checksums.from_proto(rec.checksums)
                if slot.arena is None or checksum.mismatches(slot.arena.view(rec.nbytes), sums):
                    bad.append(rec.rank)
        with self._lock:
            for rec, slot in taken:
                if not ok or bad:
                    slot.clear()
                    continue
                assert slot.arena is not None
                slots.complete(slot, rec, checksum.Checksums.from_proto(rec.checksums))
                self.store.write_record(slot.arena, slots.record(job_id, rec.rank, slot))
        if bad:
            raise ChecksumMismatch(
                f"rebuilt step {step} of job {job_id!r} ranks {bad} do not match their checksums"
            )

    # -- adoption -------------------------------------------------------------------------------

    def adopt_finished(self, job_id: str, step: int) -> None:
        """The job had ended at `step` when an earlier daemon stopped."""
        with self._lock:
            self._jobs.setdefault(job_id, Job(job_id)).finished = step

    def adopt_key(self, job_id: str, digest: bytes) -> None:
        """The job key an earlier daemon bound the job to (smp.access)."""
        with self._lock:
            self._jobs.setdefault(job_id, Job(job_id)).key = digest

    def adopt_slot(self, item: AdoptedSlot) -> bool:
        """Take over an arena of an earlier daemon; True if it held a complete snapshot."""
        if item.slot >= SLOTS_PER_RANK:
            self.store.free(item.arena)
            return False
        with self._lock:
            job = self._jobs.setdefault(item.job_id, Job(item.job_id))
            slot = job.ranks.setdefault(item.rank, RankState(item.rank)).slots[item.slot]
            slot.arena = item.arena
            rec = item.record
            if rec is None or rec.job_id != item.job_id or rec.rank != item.rank:
                return False
            try:
                sums = checksum.Checksums.from_proto(rec.checksums)
            except ValueError:
                return False
            slots.complete(slot, rec, sums)
            job.world_size = job.world_size or rec.world_size
            return True

    def settle_adopted(self) -> None:
        """After adoption: jobs on one node commit what every rank holds (clustered jobs got
        their committed step from their cluster record)."""
        with self._lock:
            for job in self._jobs.values():
                if not job.clustered:
                    commits.update(job, self._events)
