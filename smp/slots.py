"""The slot rule and the checks on a rank's two slots (plain functions, service lock held).

Slot rule (the invariant everything else leans on): a rank has two slots. A new save never goes
into the slot holding the job's committed step (or, before anything is committed, the rank's newest
complete step), nor into one an export has pinned; it takes the other one. So the last snapshot
every rank can restore is never overwritten by the one in progress.

Writers: every grant belongs to one registration (session). A request of a superseded process is
refused, and a slot still being written by another live process gets a fresh arena file, so the
old writer's late bytes land in memory nobody reads.
"""

from __future__ import annotations

import logging
import os
import time

from smp import checksum, commits
from smp._proto import snapshot_pb2
from smp.errors import BadRequest, Busy, Conflict, NotRegistered
from smp.jobs import SLOTS_PER_RANK, Job, RankInfo, RankState, Slot, SlotState
from smp.store import Store

logger = logging.getLogger(__name__)


def rank_of(job: Job | None, job_id: str, rank: int) -> RankState:
    if job is None or rank not in job.ranks or not job.world_size:
        raise NotRegistered(
            f"rank {rank} of job {job_id!r} has not registered with this SMP (was the SMP "
            "restarted?): register again"
        )
    return job.ranks[rank]


def check_session(state: RankState, job_id: str, session: int) -> None:
    if session != state.session:
        raise Conflict(
            f"rank {state.rank} of job {job_id!r} was registered again (pid {state.pid}): this "
            "process is superseded and may not save as that rank; is a stale trainer still "
            "running?"
        )


def slot_at(state: RankState, index: int) -> Slot:
    if not 0 <= index < SLOTS_PER_RANK:
        raise BadRequest(f"slot {index} is out of range: slots are 0..{SLOTS_PER_RANK - 1}")
    return state.slots[index]


def free_slots(job: Job, state: RankState) -> list[Slot]:
    """Slots a new save may take: not the one to keep, not a pinned one."""
    complete = [s for s in state.slots if s.state is SlotState.COMPLETE]
    keep = next((s for s in complete if s.step == job.committed), None)
    if keep is None and complete:
        keep = max(complete, key=lambda s: s.step)
    now = time.monotonic()
    return [s for s in state.slots if s is not keep and not s.pinned(now)]


def target_slot(job: Job, state: RankState) -> Slot:
    free = free_slots(job, state)
    if not free:
        raise Busy(
            f"rank {state.rank} of job {job.job_id!r} has no free slot: one holds the step to "
            "keep, the other a step an export is reading (pinned); saves are skipped until the "
            "export finished"
        )
    # Prefer an empty slot, then the oldest step: a stale in-progress save is taken over.
    return min(free, key=lambda s: (s.state is not SlotState.EMPTY, s.step))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_may_linger(slot: Slot, session: int) -> bool:
    """Another process holds a grant of this slot and may still be writing into its file."""
    other, pid = slot.writer
    return slot.state is SlotState.WRITING and other != session and _alive(pid)


def check_writer(slot: Slot, rank: int, step: int, generation: int) -> None:
    if slot.generation != generation or slot.state is not SlotState.WRITING:
        raise Conflict(
            f"slot {slot.index} of rank {rank} is no longer yours (generation {generation}, "
            f"now {slot.generation}, {slot.state.name}): the save of step {step} was "
            "superseded; start a new save"
        )
    if slot.step != step:
        raise BadRequest(f"slot {slot.index} was granted for step {slot.step}, not {step}")


def record(job_id: str, rank: int, slot: Slot) -> snapshot_pb2.SlotRecord:
    """What re-adopts a complete slot after a restart (and what a rebuild reinstalls)."""
    assert slot.checksums is not None and slot.arena is not None  # complete slots only
    return snapshot_pb2.SlotRecord(
        job_id=job_id,
        rank=rank,
        slot=slot.index,
        step=slot.step,
        nbytes=slot.nbytes,
        manifest=slot.manifest,
        checksums=slot.checksums.to_proto(),
        completed_unix=slot.completed_at,
        arena_inode=slot.arena.inode,
        world_size=slot.world_size,
    )


def complete(slot: Slot, rec: snapshot_pb2.SlotRecord, sums: checksum.Checksums) -> None:
    """Mark `slot` complete with what `rec` describes (adoption, rebuild)."""
    slot.state, slot.step, slot.nbytes = SlotState.COMPLETE, rec.step, rec.nbytes
    slot.manifest, slot.checksums = rec.manifest, sums
    slot.completed_at = rec.completed_unix or time.time()
    slot.world_size = rec.world_size


def check_rank_info(info: RankInfo) -> None:
    if info.world_size < 1 or info.rank >= info.world_size:
        raise BadRequest(f"rank {info.rank} is not within world size {info.world_size}")
    if info.local_world_size < 1 or info.local_rank >= info.local_world_size:
        raise BadRequest(
            f"local rank {info.local_rank} is not within local world size {info.local_world_size}"
        )
    if info.num_nodes < 1 or info.node_rank >= info.num_nodes:
        raise BadRequest(f"node {info.node_rank} is not within {info.num_nodes} nodes")


def is_rewind(job: Job, state: RankState, step: int) -> bool:
    """Is `step` not newer than what the rank holds (or the job committed)?"""
    held = [s.step for s in state.slots if s.state is SlotState.COMPLETE]
    return bool(held and step <= max(held)) or (job.committed is not None and step <= job.committed)


def rewind(store: Store, job: Job, state: RankState, step: int) -> None:
    """`step` is not newer than what the rank holds: the job went back (restarted from an
    older state). A new timeline: this rank's snapshots of `step` and later are dropped, so two
    different states never carry the same step number."""
    dropped = []
    for s in state.slots:
        if s.state is not SlotState.EMPTY and s.step >= step and s.arena is not None:
            store.drop_record(s.arena)
            dropped.append(s.step)
            s.clear()
    commits.rewind(job, step)
    logger.warning(
        "job %s rank %d: saving step %d, not newer than what it holds: a new timeline; its "
        "snapshots of steps %s are dropped",
        job.job_id,
        state.rank,
        step,
        sorted(dropped) or "(none)",
    )


def drop_foreign(store: Store, job: Job) -> None:
    """The job committed a step of its own: the ranks it no longer has here can go."""
    for rank in sorted(job.foreign):
        state = job.ranks.pop(rank, None)
        for slot in state.slots if state is not None else []:
            if slot.arena is not None:
                store.free(slot.arena)
                slot.arena = None
    if job.foreign:
        logger.info("job %s: dropped the snapshots of ranks %s", job.job_id, sorted(job.foreign))
    job.foreign.clear()
