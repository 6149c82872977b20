"""Whole nodes lost: 4 simulated nodes (an SMP process each, own socket, port and store), 2 ranks
per node (gloo, DDP, dropout, Adam, a per-rank parameter), a snapshot every step. Nodes die with
their memory; fresh SMPs take their place; the relaunched job rebuilds the lost state from the
survivors' data and parity over gRPC and ends bit for bit like a run that never failed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ecsnap.testing import (
    LocalCluster,
    compare_runs,
    launch_ranks,
    read_restore,
    short_tmpdir,
)
from smp import report

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

NODES, RANKS_PER_NODE, STEPS, KILL_AT = 4, 2, 8, 5
WORLD = NODES * RANKS_PER_NODE
ARGS = ["--steps", str(STEPS), "--shard-size", "65536"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(short_tmpdir("ecsnap-nl-"), NODES) as c:
        yield c


@pytest.fixture(scope="module")
def reference(cluster: LocalCluster) -> Path:
    """The uninterrupted run every recovered run must equal (redundancy does not change it)."""
    out = cluster.root / "reference"
    run = launch_ranks(out, "reference", cluster.sockets, RANKS_PER_NODE, ARGS, parity_env(1))
    assert run.wait(300) == [0] * WORLD, run.output()
    return out


def parity_env(m: int) -> dict[str, str]:
    return {"ECSNAP_GROUP_SIZE": str(NODES), "ECSNAP_PARITY": str(m)}


def crash(cluster: LocalCluster, out: Path, job: str, m: int) -> None:
    run = launch_ranks(
        out,
        job,
        cluster.sockets,
        RANKS_PER_NODE,
        [*ARGS, "--die-at-step", str(KILL_AT)],
        parity_env(m),
    )
    assert run.wait(300) == [-9] * WORLD, run.output()


def relaunch_and_check(cluster: LocalCluster, reference: Path, out: Path, job: str, m: int) -> int:
    run = launch_ranks(out, job, cluster.sockets, RANKS_PER_NODE, ARGS, parity_env(m))
    assert run.wait(300) == [0] * WORLD, run.output()
    restores = [read_restore(out, r) for r in range(WORLD)]
    steps = {r["step"] for r in restores}
    assert len(steps) == 1 and None not in steps, restores  # one committed step, everywhere
    assert compare_runs(reference, out, WORLD) == []
    return int(steps.pop())


def rebuilt_nodes(out: Path) -> set[int]:
    return {r // RANKS_PER_NODE for r in range(WORLD) if read_restore(out, r).get("rebuilt", False)}


def test_one_lost_node_is_rebuilt_from_parity(cluster: LocalCluster, reference: Path) -> None:
    out = cluster.root / "m1"
    crash(cluster, out, "m1", 1)
    cluster.lose(2)
    step = relaunch_and_check(cluster, reference, out, "m1", 1)
    assert 0 <= step < KILL_AT
    assert rebuilt_nodes(out) == {2}

    # Two nodes of a group that tolerates one: a clear error, no partial restore.
    cluster.lose(0, 1)
    run = launch_ranks(out / "again", "m1", cluster.sockets, RANKS_PER_NODE, ARGS, parity_env(1))
    codes = run.wait(300)
    logs = run.output()
    assert all(c != 0 for c in codes), logs
    assert f"cannot rebuild step {STEPS - 1} of job 'm1', group 0" in logs, logs
    assert "missing nodes [0, 1]" in logs, logs
    assert (
        not (out / "again" / "rank0.losses.jsonl").exists()
        or not (out / "again" / "rank0.losses.jsonl").read_text()
    )


def test_two_lost_nodes_are_rebuilt_with_two_parity(cluster: LocalCluster, reference: Path) -> None:
    out = cluster.root / "m2"
    crash(cluster, out, "m2", 2)
    cluster.lose(1, 3)
    relaunch_and_check(cluster, reference, out, "m2", 2)
    assert rebuilt_nodes(out) == {1, 3}


def test_a_damaged_snapshot_is_rebuilt_from_parity(cluster: LocalCluster, reference: Path) -> None:
    """One byte of node 1's copy of the committed step flips while the job is down: restore
    finds it (checksums), drops that copy and rebuilds it from the group's parity."""
    out = cluster.root / "damaged"
    crash(cluster, out, "damaged", 1)
    smp = cluster.smps[1]
    job = next(j for j in report.fetch_status(smp.socket).jobs if j.job_id == "damaged")
    rank = job.ranks[0]
    slot = next(s for s in rank.slots if s.step == job.committed_step and s.state == 4)
    arena = Path(smp.store_dir, "damaged", f"r{rank.rank}.s{slot.slot}.arena")
    with arena.open("r+b") as f:
        f.seek(slot.nbytes // 2)
        byte = f.read(1)
        f.seek(slot.nbytes // 2)
        f.write(bytes([byte[0] ^ 0x01]))
    assert relaunch_and_check(cluster, reference, out, "damaged", 1) == job.committed_step
    assert rebuilt_nodes(out) == {1}
