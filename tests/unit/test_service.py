"""The SMP's bookkeeping on real arena files: slot rule, memory limit, checksums, re-adoption."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from smp.adoption import readopt
from smp.daemon import assemble
from smp.errors import (
    BadRequest,
    Busy,
    ChecksumMismatch,
    Conflict,
    Internal,
    MemoryLimitExceeded,
    NotRegistered,
)
from smp.jobs import RankInfo, SlotState
from smp.service import SnapshotService
from smp.store import ARENA_GRANULE, Store

JOB = "job-1"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as ex:
        yield ex


def make(
    workdir: Path, pool: ThreadPoolExecutor, limit: int = 64 << 20, world: int = 1
) -> SnapshotService:
    svc = assemble(Store(str(workdir / "store"), limit), pool, "auto").service
    for rank in range(world):
        svc.register(JOB, RankInfo(rank, world, rank, world, 0, 1, 1000 + rank))
    return svc


def save(svc: SnapshotService, step: int, fill: int, nbytes: int = 4096) -> int:
    """Rank 0 of a one-rank job saves `step` filled with `fill` and waits for the commit."""
    grant = svc.begin_save(JOB, 0, step, nbytes)
    arena = svc.store.arena_path(JOB, 0, grant.slot)
    with arena.open("r+b") as f:
        f.write(bytes([fill]) * nbytes)
    svc.commit_save(JOB, 0, step, grant.slot, grant.generation, nbytes, b"manifest")
    svc.wait_committed(JOB, step).result(timeout=10)
    return grant.slot


def test_double_buffer_never_overwrites_committed(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    first = save(svc, 1, 1)
    second = save(svc, 2, 2)
    assert first != second
    # Step 3 starts but never commits: it must go where step 1 was, leaving step 2 intact.
    grant = svc.begin_save(JOB, 0, 3, 4096)
    assert grant.slot == first
    steps, committed, _ = svc.list_steps(JOB, 0)
    assert steps == [2] and committed == 2
    # A later save takes over the abandoned slot again, still not the committed one.
    assert svc.begin_save(JOB, 0, 4, 4096).slot == first


def test_commit_needs_every_rank(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool, world=2)
    grant = svc.begin_save(JOB, 0, 5, 100)
    svc.commit_save(JOB, 0, 5, grant.slot, grant.generation, 100, b"m")
    waiter = svc.wait_committed(JOB, 5)
    pool.submit(lambda: None).result()
    assert not waiter.done()
    grant = svc.begin_save(JOB, 1, 5, 100)
    svc.commit_save(JOB, 1, 5, grant.slot, grant.generation, 100, b"m")
    assert waiter.result(timeout=10).committed_step == 5


def test_memory_limit_refusal_keeps_what_is_stored(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool, limit=2 * ARENA_GRANULE)
    save(svc, 1, 7)
    with pytest.raises(MemoryLimitExceeded, match=r"needs .* limit"):
        svc.begin_save(JOB, 0, 2, 3 * ARENA_GRANULE)
    assert svc.list_steps(JOB, 0)[0] == [1]
    opened = svc.open_snapshot(JOB, 0, 1).result(timeout=10)
    assert Path(opened.path).read_bytes()[:4096] == bytes([7]) * 4096


def test_corruption_is_detected_and_never_served(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    slot = save(svc, 1, 3)
    path = svc.store.arena_path(JOB, 0, slot)
    with path.open("r+b") as f:
        f.seek(100)
        f.write(b"\x00")
    with pytest.raises(ChecksumMismatch, match=r"step 1 .* do not match"):
        svc.open_snapshot(JOB, 0, 1).result(timeout=10)
    assert svc.list_steps(JOB, 0)[0] == []


def test_bad_requests(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    with pytest.raises(NotRegistered):
        svc.begin_save("other-job", 0, 1, 10)
    with pytest.raises(BadRequest, match="job id"):
        svc.register("../escape", RankInfo(0, 1, 0, 1, 0, 1, 1))
    with pytest.raises(BadRequest, match="not within world size"):
        svc.register(JOB, RankInfo(3, 2, 0, 1, 0, 1, 1))
    with pytest.raises(BadRequest, match="size"):
        svc.begin_save(JOB, 0, 1, 0)
    grant = svc.begin_save(JOB, 0, 1, 10)
    with pytest.raises(BadRequest, match="out of range"):
        svc.commit_save(JOB, 0, 1, 9, grant.generation, 10, b"")
    with pytest.raises(Conflict, match="superseded"):
        svc.commit_save(JOB, 0, 1, grant.slot, grant.generation + 1, 10, b"")
    with pytest.raises(BadRequest, match="does not fit"):
        svc.commit_save(JOB, 0, 1, grant.slot, grant.generation, 1 << 40, b"")


def test_restarted_daemon_readopts_complete_snapshots(
    workdir: Path, pool: ThreadPoolExecutor
) -> None:
    svc = make(workdir, pool)
    save(svc, 1, 1)
    save(svc, 2, 2)
    svc.begin_save(JOB, 0, 3, 4096)  # in progress when the daemon "dies"
    parts = assemble(Store(str(workdir / "store"), 64 << 20), pool, "auto")
    again = parts.service
    assert readopt(again.store, parts.local, parts.crossnode).snapshots == 1
    assert again.list_steps(JOB, 0)[:2] == ([2], 2)
    opened = again.open_snapshot(JOB, 0, 2).result(timeout=10)
    assert opened.manifest == b"manifest"
    assert [s.state for s in again.jobs()[0].ranks[0].slots].count(SlotState.COMPLETE) == 1


def _record_of(svc: SnapshotService, slot: int) -> Path:
    return svc.store.arena_path(JOB, 0, slot).with_suffix(".meta")


def test_a_damaged_or_edited_record_is_never_trusted(
    workdir: Path, pool: ThreadPoolExecutor
) -> None:
    svc = make(workdir, pool)
    slot = save(svc, 201, 1)
    path = _record_of(svc, slot)
    blob = bytearray(path.read_bytes())
    blob[-20] ^= 0xFF  # "edit the step number": any changed byte breaks the record's checksum
    path.write_bytes(bytes(blob))
    parts = assemble(Store(str(workdir / "store"), 64 << 20), pool, "auto")
    assert readopt(parts.service.store, parts.local, parts.crossnode).snapshots == 0
    assert parts.service.list_steps(JOB, 0)[0] == []


def test_a_replaced_arena_leaves_no_stale_record(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    first = save(svc, 1, 1)
    save(svc, 2, 2)
    # Step 3 outgrows the slot step 1 was in: a new arena file; the SMP then dies mid-save.
    grant = svc.begin_save(JOB, 0, 3, 3 * ARENA_GRANULE)
    assert grant.slot == first
    assert not _record_of(svc, first).exists()
    parts = assemble(Store(str(workdir / "store"), 64 << 20), pool, "auto")
    assert readopt(parts.service.store, parts.local, parts.crossnode).snapshots == 1
    assert parts.service.list_steps(JOB, 0)[:2] == ([2], 2)  # no phantom step 1 or 3


def test_a_failure_while_committing_frees_the_slot_and_wakes_waiters(
    workdir: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make(workdir, pool)
    grant = svc.begin_save(JOB, 0, 1, 4096)
    waiter = svc.wait_committed(JOB, 1)

    def broken(*_: object, **__: object) -> None:
        raise OSError("the arena could not be read")

    monkeypatch.setattr("smp.checksum.compute", broken)
    svc.commit_save(JOB, 0, 1, grant.slot, grant.generation, 4096, b"m")
    with pytest.raises(Internal, match=r"could not finish step 1.*could not be read"):
        waiter.result(timeout=10)
    state = svc.jobs()[0].ranks[0].slots[grant.slot]
    assert state.state is SlotState.EMPTY
    assert "could not finish step 1" in svc.jobs()[0].last_error


def test_a_superseded_writer_can_never_commit(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    svc.register(JOB, RankInfo(0, 1, 0, 1, 0, 1, os.getpid(), session=11))
    grant = svc.begin_save(JOB, 0, 0, 4096, session=11)
    svc.commit_save(JOB, 0, 0, grant.slot, grant.generation, 4096, b"m", session=11)
    svc.wait_committed(JOB, 0).result(timeout=10)
    stale = svc.begin_save(JOB, 0, 1, 4096, session=11)
    stale_inode = os.stat(stale.path).st_ino
    # The rank is relaunched (a new process registers) while the old one is still writing.
    svc.register(JOB, RankInfo(0, 1, 0, 1, 0, 1, os.getpid(), session=22))
    with pytest.raises(Conflict, match="registered again"):
        svc.commit_save(JOB, 0, 1, stale.slot, stale.generation, 4096, b"m", session=11)
    with pytest.raises(Conflict, match="superseded"):
        svc.begin_save(JOB, 0, 2, 4096, session=11)
    live = svc.begin_save(JOB, 0, 1, 4096, session=22)
    assert live.slot == stale.slot  # the only slot that does not hold the committed step
    # The old writer (alive: this process) may still write its mapping: the live one gets a new
    # file, so those late bytes land where nobody reads.
    assert os.stat(live.path).st_ino != stale_inode
    svc.commit_save(JOB, 0, 1, live.slot, live.generation, 4096, b"m", session=22)
    assert svc.wait_committed(JOB, 1).result(timeout=10).committed_step == 1


def test_saving_an_older_step_starts_a_new_timeline(
    workdir: Path, pool: ThreadPoolExecutor
) -> None:
    svc = make(workdir, pool)
    for step in range(6):
        save(svc, step, step)
    assert svc.list_steps(JOB, 0)[:2] == ([5, 4], 5)
    grant = svc.begin_save(JOB, 0, 3, 4096)  # the job went back to step 3
    steps, committed, _ = svc.list_steps(JOB, 0)
    assert steps == [] and committed is None  # the old 3..5 are of another timeline
    waiter = svc.wait_committed(JOB, 3)
    assert not waiter.done()  # not answered by the old step 5
    with svc.store.arena_path(JOB, 0, grant.slot).open("r+b") as f:
        f.write(b"\x33" * 4096)
    svc.commit_save(JOB, 0, 3, grant.slot, grant.generation, 4096, b"new")
    assert waiter.result(timeout=10).committed_step == 3
    save(svc, 4, 4)
    assert svc.list_steps(JOB, 0)[:2] == ([4, 3], 4)  # never two different "step 5"s


def test_pinned_slots_are_kept_and_a_pin_lapses(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    save(svc, 1, 1)
    save(svc, 2, 2)
    svc.pin(JOB, 0, 1, True, lease_s=60)  # an export reads step 1
    with pytest.raises(Busy, match="pinned"):
        svc.begin_save(JOB, 0, 3, 4096)
    assert not svc.slots_free(JOB)
    svc.pin(JOB, 0, 1, True, lease_s=0)  # renewed with no lease left: lapses at once
    assert svc.slots_free(JOB)
    assert svc.begin_save(JOB, 0, 3, 4096).slot == 0


def test_forget_frees_everything(workdir: Path, pool: ThreadPoolExecutor) -> None:
    svc = make(workdir, pool)
    save(svc, 1, 1)
    save(svc, 2, 2)
    assert svc.store.used > 0
    assert svc.forget(JOB) == 2 * ARENA_GRANULE
    assert svc.store.used == 0 and not svc.store.job_dir(JOB).exists()
    assert svc.jobs() == []
    assert svc.idle_jobs(0) == []
