"""The durable tier behind memory: committed snapshots persisted as DCP checkpoints in the
background, restored when memory has nothing (or cannot bring back its committed step).

Real SMP processes, real DCP files (a directory, fsspec's memory:// object store, a tmpfs that
fills up), real killed trainers: a whole job lost with its SMPs' memory comes back bit for bit, a
trainer killed mid-write leaves nothing loadable, a full or unusable store is reported and
training goes on.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import torch.distributed.checkpoint as dcp  # noqa: E402
from torch import nn  # noqa: E402

import ecsnap  # noqa: E402
from ecsnap.durable.store import Store  # noqa: E402
from ecsnap.testing import (  # noqa: E402
    LocalCluster,
    LocalSMP,
    compare_runs,
    free_port,
    launch_ranks,
    read_restore,
    short_tmpdir,
    states_equal,
)
from smp import report  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def make_app(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 8))
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    return {"model": model, "optim": optim, "rng": ecsnap.RNGState(), "extra": {"seen": 0}}


def train(app: dict[str, Any], steps: range, snap: ecsnap.Snapshotter) -> None:
    for step in steps:
        loss = app["model"](torch.randn(16, 64)).square().mean()
        loss.backward()
        app["optim"].step()
        app["optim"].zero_grad()
        app["extra"]["seen"] += 16
        snap.save(step, app, on_busy="wait").wait_protected(60)


def state_of(app: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": {k: v.clone() for k, v in app["model"].state_dict().items()},
        "optim": app["optim"].state_dict(),
        "rng": torch.get_rng_state(),
        "extra": dict(app["extra"]),
    }


@pytest.fixture
def work() -> Path:
    return short_tmpdir("ecsnap-dt-")


def fresh_smp(work: Path, name: str, *extra: str) -> LocalSMP:
    return LocalSMP(work / name, memory_limit="512M", extra_args=extra).start()


def job_status(smp: LocalSMP, job: str) -> Any:
    return next(j for j in report.fetch_status(smp.socket).jobs if j.job_id == job)


# -- in this process: one rank ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["dir", "memory"])
def test_persisted_steps_restore_bitwise_and_load_with_dcp_alone(work: Path, where: str) -> None:
    target = str(work / "persist") if where == "dir" else f"memory://dt-{uuid.uuid4().hex}/job"
    port = free_port()
    smp = fresh_smp(work, "a", "--metrics-port", str(port))
    app = make_app(0)
    try:
        with ecsnap.Snapshotter(
            job_id="job", socket=smp.socket, persist_to=target, persist_every=3, persist_keep=2
        ) as snap:
            assert snap.restore(app) is None
            train(app, range(8), snap)
        store = Store(target)
        steps = store.complete()
        assert steps == [6, 3]  # every 3 steps, the newest 2 kept
        with ecsnap.Snapshotter(
            job_id="job", socket=smp.socket, persist_to=target, persist_every=3, persist_keep=2
        ) as snap:
            train(app, range(8, 10), snap)  # a round after a restart sees what is there
        st = job_status(smp, "job")
        assert (st.persist_target, st.has_persisted, st.persisted_step) == (target, True, 9)
        assert st.persist_error == "" and st.persist_bytes_per_s > 0
        assert "persisted step 9 (lag 0 steps" in report.render(report.fetch_status(smp.socket))
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        assert b'ecsnap_job_persisted_step{job="job"} 9.0' in metrics
        assert b'ecsnap_job_persist_lag_steps{job="job"} 0.0' in metrics
        expected = state_of(app)
    finally:
        smp.close()

    # Every SMP gone with its memory: a new one knows nothing; the durable tier has step 9.
    smp = fresh_smp(work, "b")
    try:
        again = make_app(1)
        with ecsnap.Snapshotter(job_id="job", socket=smp.socket, persist_to=target) as snap:
            assert snap.restore(again) == 9
            assert snap.last_restore is not None and snap.last_restore.source == "durable"
        assert states_equal(state_of(again), expected)
    finally:
        smp.close()

    # DCP alone, into a model that knows nothing of ecsnap.
    plain = make_app(2)["model"]
    sd = {"model": plain.state_dict()}
    reader = Store(target).reader(9)
    dcp.load(sd, storage_reader=reader, no_dist=True)
    assert states_equal(sd["model"], expected["model"])


def test_a_damaged_persisted_step_is_skipped_for_an_older_one(work: Path) -> None:
    target = work / "persist"
    smp = fresh_smp(work, "a")
    app = make_app(0)
    try:
        with ecsnap.Snapshotter(
            job_id="job", socket=smp.socket, persist_to=target, persist_every=2
        ) as snap:
            train(app, range(3), snap)
            expected = state_of(app)
            train(app, range(3, 5), snap)
    finally:
        smp.close()
    assert Store(str(target)).complete() == [4, 2]
    data = next((target / "step-0000000004").glob("__0_*.distcp"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    smp = fresh_smp(work, "b")
    try:
        again = make_app(1)
        with ecsnap.Snapshotter(job_id="job", socket=smp.socket, persist_to=target) as snap:
            assert snap.restore(again) == 2
    finally:
        smp.close()
    # Step 2 was persisted right after step 2's save: its state is the one after step 2's
    # update, which `expected` captured after step 2 too.
    assert states_equal(state_of(again)["model"], expected["model"])


@pytest.fixture
def tiny_tmpfs(work: Path) -> Iterator[Path]:
    mount = work / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_reported_and_training_goes_on(work: Path, tiny_tmpfs: Path) -> None:
    smp = fresh_smp(work, "a")
    app = make_app(0)
    try:
        with ecsnap.Snapshotter(
            job_id="job", socket=smp.socket, persist_to=tiny_tmpfs, persist_every=1
        ) as snap:
            train(app, range(4), snap)  # every step still committed in memory
        st = job_status(smp, "job")
        assert "No space left on device" in st.persist_error, st
        assert st.persist_failures >= 1 and not st.has_persisted
        assert "PERSIST FAILING" in report.render(report.fetch_status(smp.socket))
        assert st.has_committed and st.committed_step == 3
    finally:
        smp.close()
    assert Store(str(tiny_tmpfs)).complete() == []
    assert not list(tiny_tmpfs.glob(".partial/*"))  # a failed attempt leaves nothing behind


def test_an_unusable_target_is_reported_and_training_goes_on(work: Path) -> None:
    blocker = work / "a-file"
    blocker.write_text("persist_to points under me")
    smp = fresh_smp(work, "a")
    try:
        with ecsnap.Snapshotter(
            job_id="job", socket=smp.socket, persist_to=blocker / "persist", persist_every=1
        ) as snap:
            train(make_app(0), range(2), snap)
        st = job_status(smp, "job")
        assert "Not a directory" in st.persist_error or "not a directory" in st.persist_error, st
        assert st.committed_step == 1
    finally:
        smp.close()


def test_the_smp_offers_a_durable_tier_to_jobs_that_choose_none(work: Path) -> None:
    offer = work / "offered"
    smp = fresh_smp(work, "a", "--persist-to", str(offer), "--persist-every", "2")
    try:
        with ecsnap.Snapshotter(job_id="quiet", socket=smp.socket) as snap:
            train(make_app(0), range(3), snap)
            assert snap.persist_policy is not None
            assert snap.persist_policy.target == f"{offer}/quiet"
        assert Store(str(offer / "quiet")).complete() == [2]
    finally:
        smp.close()


# -- real jobs: ranks as processes, SMPs killed with their memory --------------------------------

NODES, STEPS, KILL_AT = 2, 14, 10
DEMO = ["--steps", str(STEPS), "--shard-size", "65536", "--step-time", "0.1"]


def durable_env(target: Path, **more: str) -> dict[str, str]:
    env = {
        "ECSNAP_GROUP_SIZE": "2",
        "ECSNAP_PARITY": "1",
        "ECSNAP_PERSIST_TO": str(target),
        "ECSNAP_PERSIST_EVERY": "4",
        "ECSNAP_PERSIST_KEEP": "2",
    }
    return {**env, **more}


def test_a_whole_job_lost_with_its_memory_resumes_bitwise_from_the_durable_tier(
    work: Path,
) -> None:
    """Two nodes, parity 1: both lose their SMPs and memory (more than the parity covers, as a
    job preempted everywhere). The relaunch on fresh SMPs restores the newest persisted step
    (an unchanged script: the durable tier comes from the environment) and ends bit for bit
    like a run that never stopped."""
    target = work / "persist"
    with LocalCluster(work / "nodes", NODES, memory_limit="256M") as cluster:
        ref = launch_ranks(work / "ref", "ref", cluster.sockets, 1, DEMO, durable_env(work / "r"))
        assert ref.wait(300) == [0] * NODES, ref.output()
        out = work / "run"
        env = durable_env(target)
        died = launch_ranks(
            out, "run", cluster.sockets, 1, [*DEMO, "--die-at-step", str(KILL_AT)], env
        )
        assert died.wait(300) == [-9] * NODES, died.output()
        persisted = Store(str(target)).complete()
        assert persisted and persisted[0] in (4, 8), persisted
        cluster.lose(0, 1)
        again = launch_ranks(out, "run", cluster.sockets, 1, DEMO, env)
        assert again.wait(300) == [0] * NODES, again.output()
        restores = [read_restore(out, r) for r in range(NODES)]
        assert {(r["step"], r["source"]) for r in restores} == {(persisted[0], "durable")}, restores
        assert "restoring from the durable tier" in again.output()
        assert compare_runs(work / "ref", out, NODES) == []
        assert Store(str(target)).complete() == [12, 8]  # persisted on, the newest 2 kept


def test_a_trainer_killed_mid_write_leaves_no_loadable_step(work: Path) -> None:
    """The write is slowed down (a bandwidth cap) and the trainer SIGKILLed in the middle of
    it: the half-written step is in the staging place only, never complete, never loaded; the
    next run on fresh memory starts fresh (and says why) and clears the remains."""
    target = work / "persist"
    args = ["--steps", "40", "--shard-size", str(1 << 20), "--step-time", "0.05"]
    env = {
        "ECSNAP_PERSIST_TO": str(target),
        "ECSNAP_PERSIST_EVERY": "2",
        "ECSNAP_PERSIST_BANDWIDTH": "2M",
    }
    with LocalCluster(work / "nodes", 1, memory_limit="256M") as cluster:
        run = launch_ranks(work / "run", "slow", cluster.sockets, 1, args, env)
        deadline = time.monotonic() + 120
        while not any(f.stat().st_size for f in target.glob(".partial/*/*.distcp")):
            assert time.monotonic() < deadline, run.output()
            assert run.procs[0].poll() is None, run.output()
            time.sleep(0.05)
        run.kill()
        assert Store(str(target)).complete() == []
        assert not list(target.glob("step-*"))
        assert not list(target.glob(".partial/*/.metadata"))  # DCP itself would refuse it too
        cluster.lose(0)
        fresh = {**env, "ECSNAP_PERSIST_BANDWIDTH": "0"}
        again = launch_ranks(work / "again", "slow", cluster.sockets, 1, ["--steps", "4"], fresh)
        assert again.wait(300) == [0], again.output()
        assert read_restore(work / "again", 0)["step"] is None
        assert "holds no complete step: starting fresh" in again.output()
        assert Store(str(target)).complete() == [2]
        assert not list(target.glob(".partial/*"))  # the killed attempt's remains are gone


SHARDED = "tests.jobs.sharded"


def test_fsdp2_persisted_steps_reshard_to_another_world_size(work: Path) -> None:
    """FSDP2 on 2 ranks persists; every SMP is lost; 3 ranks restore from the durable tier, each
    loading its new (uneven) shards straight from the persisted ones, as DCP reshards."""
    target = work / "persist"
    env = {"ECSNAP_PERSIST_TO": str(target), "ECSNAP_PERSIST_EVERY": "3", "SHARDED_KEEP_STEPS": "1"}
    args = ["--mode", "fsdp", "--steps", "8"]
    with LocalCluster(work / "nodes", 1, memory_limit="256M") as cluster:
        run = launch_ranks(work / "two", "fsdp", cluster.sockets, 2, args, env, module=SHARDED)
        assert run.wait(300) == [0, 0], run.output()
        assert Store(str(target)).complete()[0] == 6
        cluster.lose(0)
        three = launch_ranks(
            work / "three", "fsdp", cluster.sockets, 3, ["--mode", "fsdp", "--steps", "7"], env,
            module=SHARDED,
        )  # fmt: skip
        assert three.wait(300) == [0, 0, 0], three.output()
    saved = torch.load(work / "two" / "rank0.step6.pt", weights_only=True)  # gathered state
    for rank in range(3):
        assert read_restore(work / "three", rank)["step"] == 6
        got = torch.load(work / "three" / f"rank{rank}.restored6.pt", weights_only=True)
        assert states_equal(got, saved), rank
