"""Sharded state (FSDP2, tensor parallel, HSDP) killed and recovered bit for bit; exported to DCP.

Real SMP processes, real ranks (gloo on CPU) running `tests/jobs/sharded.py`: an MLP whose widths
split unevenly over the ranks, dropout, AdamW, a snapshot every step. Every check is bitwise:
the state restored after the kill equals the uninterrupted run's state at that step, and every
later loss and the final (gathered and local) state equal it too.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ecsnap.testing import LocalSMP, launch_ranks, read_losses, read_restore
from tests.jobs.sharded import build_model

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

JOB = "tests.jobs.sharded"
STEPS, KILL_AT = 8, 5
KEEP = {"SHARDED_KEEP_STEPS": "1"}


def equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def check_recovered(reference: Path, out: Path, world: int) -> int:
    """Bitwise: restored state = reference at that step; later losses and final state equal."""
    restores = [read_restore(out, r) for r in range(world)]
    steps = {r["step"] for r in restores}
    assert len(steps) == 1 and None not in steps, restores
    step = int(steps.pop())
    for rank in range(world):
        restored = load(out / f"rank{rank}.restored{step}.pt")
        assert equal(restored, load(reference / f"rank{rank}.step{step}.pt")), rank
        assert read_losses(reference, rank) == read_losses(out, rank), rank
        assert equal(load(reference / f"rank{rank}.final.pt"), load(out / f"rank{rank}.final.pt"))
    return step


def crash_and_recover(
    sockets: list[str],
    root: Path,
    mode: str,
    ranks_per_node: int,
    env: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    args = ["--mode", mode, "--steps", str(STEPS)]
    world = len(sockets) * ranks_per_node
    reference = root / f"{mode}-ref"
    ref = launch_ranks(
        reference, f"{mode}-ref", sockets, ranks_per_node, args, {**KEEP, **(env or {})}, module=JOB
    )
    assert ref.wait(300) == [0] * world, ref.output()
    out = root / mode
    crash = launch_ranks(
        out, mode, sockets, ranks_per_node, [*args, "--die-at-step", str(KILL_AT)], env, module=JOB
    )
    assert crash.wait(300) == [-9] * world, crash.output()
    assert crash.output().count(f"SIGKILL at step {KILL_AT}, save in flight: True") == world
    return reference, out


@pytest.fixture
def node(workdir: Path) -> Iterator[LocalSMP]:
    smp = LocalSMP(workdir / "n0", memory_limit="512M").start()
    try:
        yield smp
    finally:
        smp.close()


@pytest.mark.parametrize("mode", ["fsdp", "tp"])
def test_sharded_job_killed_mid_save_recovers_bitwise(
    node: LocalSMP, workdir: Path, mode: str
) -> None:
    reference, out = crash_and_recover([node.socket], workdir, mode, 2)
    again = launch_ranks(
        out, mode, [node.socket], 2, ["--mode", mode, "--steps", str(STEPS)], module=JOB
    )
    assert again.wait(300) == [0, 0], again.output()
    assert check_recovered(reference, out, 2) == KILL_AT - 1  # the in-flight step never committed


def test_hsdp_on_a_2d_mesh_recovers_bitwise(node: LocalSMP, workdir: Path) -> None:
    reference, out = crash_and_recover([node.socket], workdir, "hsdp", 4)
    again = launch_ranks(
        out, "hsdp", [node.socket], 4, ["--mode", "hsdp", "--steps", str(STEPS)], module=JOB
    )
    assert again.wait(300) == [0] * 4, again.output()
    assert check_recovered(reference, out, 4) == KILL_AT - 1


def test_fsdp_node_loss_is_rebuilt_from_parity_bitwise(workdir: Path) -> None:
    smps = [LocalSMP(workdir / f"node{n}", memory_limit="256M").start() for n in range(4)]
    env = {"ECSNAP_GROUP_SIZE": "4", "ECSNAP_PARITY": "1"}
    try:
        reference, out = crash_and_recover([s.socket for s in smps], workdir, "fsdp", 1, env)
        smps[2].stop(9)  # node 2 is gone with its memory; a fresh SMP replaces it
        smps[2].wipe()
        smps[2] = LocalSMP(workdir / "node2-new", memory_limit="256M").start()
        sockets = [s.socket for s in smps]
        again = launch_ranks(
            out, "fsdp", sockets, 1, ["--mode", "fsdp", "--steps", str(STEPS)], env, module=JOB
        )
        assert again.wait(300) == [0] * 4, again.output()
        check_recovered(reference, out, 4)
        assert [read_restore(out, r)["rebuilt"] for r in range(4)] == [False, False, True, False]
    finally:
        for s in smps:
            s.close()


def test_export_dcp_loads_with_dcp_alone_into_an_unsharded_model(
    node: LocalSMP, workdir: Path
) -> None:
    out = workdir / "export"
    run = launch_ranks(
        out,
        "exp",
        [node.socket],
        2,
        ["--mode", "fsdp", "--steps", "5", "--export-at", "3"],
        module=JOB,
    )
    assert run.wait(300) == [0, 0], run.output()
    exported = load(out / "rank0.exported.pt")  # the job's gathered state at step 3

    # Parameters: plain dcp.load into an unsharded model's state dict (world size 1, not 2).
    model = build_model("fsdp")
    sd = {"model": model.state_dict()}
    dcp.load(sd, checkpoint_id=out / "dcp")
    assert equal(sd["model"], exported["model"])

    # Optimizer state: FQN-keyed, so set_optimizer_state_dict restores it at another world size.
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    both = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}
    dcp.load(both, checkpoint_id=out / "dcp")
    set_optimizer_state_dict(model, optim, both["optim"])
    assert equal(optim.state_dict()["state"], exported["optim"]["state"])

    # The job is gone; `ecsnap export`, one process per rank, exports it again without it.
    cli = launch_ranks(
        out / "cli",
        "exp",
        [node.socket],
        2,
        ["export", str(out / "again")],
        module="ecsnap",
        pass_out=False,
    )
    assert cli.wait(120) == [0, 0], cli.output()
    assert "exported step 4 of job 'exp'" in cli.output()
    final = load(out / "rank0.final.pt")  # step 4 was the job's last
    sd = {"model": build_model("fsdp").state_dict()}
    dcp.load(sd, checkpoint_id=out / "again")
    assert equal(sd["model"], final["model"])
    shutil.rmtree(out / "dcp")
    shutil.rmtree(out / "again")


def test_renumbered_nodes_restore_from_wherever_the_snapshots_are(workdir: Path) -> None:
    """torchrun's rendezvous gave the nodes each other's ranks on the relaunch: every rank's
    snapshot is on the other node's SMP, fetched from there, and the run goes on bit for bit."""
    a = LocalSMP(workdir / "a", memory_limit="256M").start()
    b = LocalSMP(workdir / "b", memory_limit="256M").start()
    env = {"ECSNAP_GROUP_SIZE": "2", "ECSNAP_PARITY": "1"}
    try:
        reference, out = crash_and_recover([a.socket, b.socket], workdir, "fsdp", 1, env)
        args = ["--mode", "fsdp", "--steps", str(STEPS)]
        again = launch_ranks(out, "fsdp", [b.socket, a.socket], 1, args, env, module=JOB)
        assert again.wait(300) == [0, 0], again.output()
        assert check_recovered(reference, out, 2) == KILL_AT - 1
        assert "found on other nodes" in again.output()
    finally:
        a.close()
        b.close()


def test_renumbered_and_a_node_lost_is_a_restore_error_not_a_fresh_start(workdir: Path) -> None:
    """Renumbered and node b lost at once: b's rank is rebuilt from parity only on the layout it
    was saved in, so the relaunch raises on every rank and says what to do."""
    a = LocalSMP(workdir / "a", memory_limit="256M").start()
    b = LocalSMP(workdir / "b", memory_limit="256M").start()
    env = {"ECSNAP_GROUP_SIZE": "2", "ECSNAP_PARITY": "1"}
    fresh = None
    try:
        _, out = crash_and_recover([a.socket, b.socket], workdir, "fsdp", 1, env)
        b.stop(9)
        b.wipe()
        fresh = LocalSMP(workdir / "b-new", memory_limit="256M").start()
        args = ["--mode", "fsdp", "--steps", str(STEPS)]
        again = launch_ranks(out, "fsdp", [fresh.socket, a.socket], 1, args, env, module=JOB)
        codes, logs = again.wait(300), again.output()
        assert all(c != 0 for c in codes), logs
        assert logs.count("cannot come back from memory") == 2, logs
        # The save in flight at the kill may have committed before the ranks died.
        assert any(f"step {s} was committed" in logs for s in (KILL_AT - 1, KILL_AT)), logs
    finally:
        for smp in (a, b, fresh):
            if smp is not None:
                smp.close()


def test_another_world_size_is_resharded_from_memory(node: LocalSMP, workdir: Path) -> None:
    """4 FSDP2 ranks saved; 3 relaunch: each assembles its new (uneven) shards from the old
    ones, and the restored state, gathered, equals what was saved (as DCP resharding gives)."""
    reference, out = crash_and_recover([node.socket], workdir, "fsdp", 4)
    args = ["--mode", "fsdp", "--steps", str(STEPS)]
    again = launch_ranks(out / "three", "fsdp", [node.socket], 3, args, module=JOB)
    assert again.wait(300) == [0] * 3, again.output()
    assert "resharded" in again.output()
    step = read_restore(out / "three", 0)["step"]
    assert step == KILL_AT - 1
    saved = load(reference / f"rank0.step{step}.pt")  # the 4-rank run's gathered state then
    for rank in range(3):
        assert equal(load(out / "three" / f"rank{rank}.restored{step}.pt"), saved), rank
