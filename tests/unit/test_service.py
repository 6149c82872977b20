"""The SMP's bookkeeping on real arena files: slot rule, memory limit, checksums, re-adoption."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from smp.adoption import readopt
from smp.daemon import assemble
from smp.errors import BadRequest, ChecksumMismatch, Conflict, MemoryLimitExceeded, NotRegistered
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
