"""Never restore a wrong state, never lose a protected one: real SMPs, real ranks, real faults.

- an SMP killed and restarted on its store keeps the parity it held, so a later node loss is
  still rebuilt bit for bit;
- a replaced node that cannot reach its peers is a RestoreError naming them, not a fresh start;
- a parity holder out of memory reaches every trainer as MemoryLimitError naming the node;
- a DDP job relaunched at another world size restores the parameters it saved;
- restore() before init_process_group and `smp forget` say what they do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ecsnap
from ecsnap.testing import (
    LocalCluster,
    LocalSMP,
    compare_runs,
    launch_ranks,
    read_restore,
    states_equal,
)
from smp import report

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

ARGS = ["--steps", "8", "--shard-size", "65536"]


def parity(nodes: int) -> dict[str, str]:
    return {"ECSNAP_GROUP_SIZE": str(nodes), "ECSNAP_PARITY": "1"}


def test_an_smp_restart_keeps_its_parity_and_a_later_node_loss_is_rebuilt(workdir: Path) -> None:
    with LocalCluster(workdir / "c", nodes=4, memory_limit="256M") as cluster:
        env = parity(4)
        ref = launch_ranks(workdir / "ref", "ref", cluster.sockets, 1, ARGS, env)
        assert ref.wait(300) == [0] * 4, ref.output()
        out = workdir / "run"
        crash = launch_ranks(out, "job", cluster.sockets, 1, [*ARGS, "--die-at-step", "5"], env)
        assert crash.wait(300) == [-9] * 4, crash.output()

        cluster.restart(0)  # SIGKILL and restart on its store, as systemd would
        job = next(j for j in report.fetch_status(cluster.sockets[0]).jobs if j.job_id == "job")
        assert job.parity_bytes > 0 and not job.degraded, job
        assert job.has_protected and job.protected_step == job.committed_step

        cluster.lose(1)  # another node gone: rebuilding it needs node 0's re-adopted parity
        again = launch_ranks(out, "job", cluster.sockets, 1, ARGS, env)
        assert again.wait(300) == [0] * 4, again.output()
        assert [read_restore(out, r)["rebuilt"] for r in range(4)] == [False, True, False, False]
        assert compare_runs(workdir / "ref", out, 4) == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_a_replaced_node_that_cannot_reach_its_peers_is_an_error_not_a_fresh_start(
    workdir: Path,
) -> None:
    from tests.unit.test_tls import make_ca, make_cert

    pki = workdir / "pki"
    pki.mkdir()
    make_ca(pki, "ca")
    make_ca(pki, "rogue-ca")
    for name, ca in (("a", "ca"), ("b", "ca"), ("rogue", "rogue-ca")):
        make_cert(pki, ca, name)

    def tls(name: str, ca: str = "ca") -> tuple[str, ...]:
        return ("--tls-cert", f"{pki}/{name}.pem", "--tls-key", f"{pki}/{name}.key",
                "--tls-ca", f"{pki}/{ca}.pem")  # fmt: skip

    a = LocalSMP(workdir / "a", "256M", tls("a")).start()
    b = LocalSMP(workdir / "b", "256M", tls("b")).start()
    try:
        run = launch_ranks(workdir / "run", "tls", [a.socket, b.socket], 1, ARGS, parity(2))
        assert run.wait(300) == [0, 0], run.output()
        b.close()  # node 1 replaced by a machine whose certificate another CA signed
        b = LocalSMP(workdir / "b2", "256M", tls("rogue", "rogue-ca")).start()
        again = launch_ranks(workdir / "again", "tls", [a.socket, b.socket], 1, ARGS, parity(2))
        codes, logs = again.wait(300), again.output()
        assert codes != [0, 0], logs
        assert "RestoreError" in logs and "node(s) [0] did not answer" in logs, logs
        assert "UNAVAILABLE" in logs, logs
        assert not any((workdir / "again" / f"rank{r}.losses.jsonl").exists() for r in range(2)), (
            "a rank started training from scratch"
        )
    finally:
        a.close()
        b.close()


def test_a_parity_holder_out_of_memory_reaches_every_trainer(workdir: Path) -> None:
    # Under 2 MiB of state per rank (one 2 MiB arena): node 1 fits its own slot, not node 0's
    # parity beside it.
    a = LocalSMP(workdir / "a", "256M").start()
    b = LocalSMP(workdir / "b", "3M").start()
    try:
        run = launch_ranks(workdir / "run", "oom", [a.socket, b.socket], 1, ARGS, parity(2))
        codes, logs = run.wait(300), run.output()
        assert codes == [1, 1], logs
        for rank in range(2):
            log = (workdir / "run" / f"rank{rank}.log").read_text()
            assert "MemoryLimitError" in log and "node 1 cannot hold parity" in log, log
    finally:
        a.close()
        b.close()


def test_a_ddp_job_restored_at_another_world_size(workdir: Path, smp_node: LocalSMP) -> None:
    """What is not a DTensor is replicated as far as resharding knows (DCP's rule too): a new rank
    gets its old rank's state where it had one, rank 0's otherwise, at the newest step."""
    run = launch_ranks(workdir / "two", "world", [smp_node.socket], 2, ARGS)
    assert run.wait(300) == [0, 0], run.output()
    saved = [torch.load(workdir / "two" / f"rank{r}.final.pt", weights_only=True) for r in (0, 1)]
    for ranks in (1, 3):
        again = launch_ranks(workdir / f"w{ranks}", "world", [smp_node.socket], ranks, ARGS)
        codes, logs = again.wait(300), again.output()
        assert codes == [0] * ranks, logs
        assert f"restored step 7 saved by 2 ranks into {ranks} ranks (resharded" in logs, logs
        for rank in range(ranks):
            assert read_restore(workdir / f"w{ranks}", rank)["step"] == 7
            now = torch.load(workdir / f"w{ranks}" / f"rank{rank}.final.pt", weights_only=True)
            # An old rank's own copy where there is one (the demo's per-rank "shard"), else
            # rank 0's.
            then = saved[rank if rank < 2 else 0]
            for key in ("model", "optim", "shard"):
                assert states_equal(then[key], now[key]), (ranks, rank, key)


def test_restore_before_the_process_group_is_a_clear_error(
    smp_node: LocalSMP, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    snap = ecsnap.Snapshotter(job_id="early", socket=smp_node.socket)
    try:
        with pytest.raises(ecsnap.EcsnapError, match="init_process_group"):
            snap.restore({"x": torch.zeros(1)})
    finally:
        snap.close()


def test_forget_frees_a_jobs_memory(workdir: Path, smp_node: LocalSMP) -> None:
    with ecsnap.Snapshotter(job_id="old", socket=smp_node.socket) as snap:
        snap.save(1, {"x": torch.ones(1 << 20)}).wait_protected(timeout=60)
    used = report.fetch_status(smp_node.socket).memory_used
    assert used > 0
    cli = [sys.executable, "-m", "smp", "forget", "old", "--socket", smp_node.socket]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "forgotten" in done.stdout, done.stderr
    status = report.fetch_status(smp_node.socket)
    assert status.memory_used == 0 and not status.jobs
    with ecsnap.Snapshotter(job_id="old", socket=smp_node.socket) as snap:
        assert snap.restore({"x": torch.zeros(1 << 20)}) is None  # and it may save again
        snap.save(0, {"x": torch.ones(1 << 20)}).wait_protected(timeout=60)
        assert snap.forget() > 0
    assert json.loads(report.to_json(report.fetch_status(smp_node.socket)))["jobs"] == []


def test_protection_lost_in_a_restart_is_reported_until_the_next_commit(workdir: Path) -> None:
    with LocalCluster(workdir / "c", nodes=2, memory_limit="256M") as cluster:
        run = launch_ranks(workdir / "run", "deg", cluster.sockets, 1, ARGS, parity(2))
        assert run.wait(300) == [0, 0], run.output()
        smp = cluster.smps[0]
        smp.stop(9)
        for record in Path(smp.store_dir, "deg").glob("p*.meta"):
            record.unlink()  # the parity node 0 held does not survive this "restart"
        smp.start()
        job = next(j for j in report.fetch_status(smp.socket).jobs if j.job_id == "deg")
        assert "lost the parity it holds" in job.degraded and "next committed step" in job.degraded
        more = launch_ranks(
            workdir / "run",
            "deg",
            cluster.sockets,
            1,
            ["--steps", "10", "--shard-size", "65536"],
            parity(2),
        )
        assert more.wait(300) == [0, 0], more.output()
        job = next(j for j in report.fetch_status(smp.socket).jobs if j.job_id == "deg")
        assert job.committed_step == 9 and job.degraded == ""


def test_idle_jobs_are_forgotten_after_the_ttl(workdir: Path) -> None:
    node = LocalSMP(workdir / "ttl", "64M", ("--job-ttl", "1")).start()
    try:
        with ecsnap.Snapshotter(job_id="idle", socket=node.socket) as snap:
            snap.save(1, {"x": torch.ones(1 << 16)}).wait_protected(timeout=60)
        deadline = time.monotonic() + 30
        while report.fetch_status(node.socket).jobs:
            assert time.monotonic() < deadline, "the idle job was never forgotten"
            time.sleep(0.2)
        assert report.fetch_status(node.socket).memory_used == 0
        assert "idle for over 1s" in node.tail()
    finally:
        node.close()
