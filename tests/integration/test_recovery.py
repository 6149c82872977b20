"""The decisive check: a job killed mid-save and relaunched ends bit for bit like one never killed.

Real SMP process, 2 trainer ranks (gloo, DDP, dropout, Adam, a per-rank parameter), a snapshot every
step, SIGKILL right after a save is launched, relaunch, restore from the SMP, train to the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ecsnap.testing import LocalSMP, compare_runs, launch_ranks, read_restore

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

STEPS, KILL_AT, RANKS = 24, 13, 2


def test_killed_trainers_recover_bitwise(smp_node: LocalSMP, workdir: Path) -> None:
    args = ["--steps", str(STEPS)]
    ref = launch_ranks(workdir / "ref", "reference", [smp_node.socket], RANKS, args)
    assert ref.wait(180) == [0] * RANKS, ref.output()

    out = workdir / "run"
    crash = launch_ranks(
        out, "crashy", [smp_node.socket], RANKS, [*args, "--die-at-step", str(KILL_AT)]
    )
    assert crash.wait(180) == [-9] * RANKS, crash.output()
    logs = crash.output()
    assert logs.count(f"SIGKILL at step {KILL_AT}, save in flight: True") == RANKS, logs

    again = launch_ranks(out, "crashy", [smp_node.socket], RANKS, args)
    assert again.wait(180) == [0] * RANKS, again.output()
    restored = {read_restore(out, r)["step"] for r in range(RANKS)}
    assert restored == {KILL_AT - 1}  # the in-flight step never committed
    assert compare_runs(workdir / "ref", out, RANKS) == []


def test_fresh_job_restores_nothing(smp_node: LocalSMP, workdir: Path) -> None:
    run = launch_ranks(workdir / "fresh", "fresh", [smp_node.socket], 1, ["--steps", "2"])
    assert run.wait(120) == [0], run.output()
    assert read_restore(workdir / "fresh", 0)["step"] is None
