"""The README's quickstart as a runnable script (examples/train.py), killed and relaunched.

One rank: torchdata's StatefulDataLoader (shuffled, several epochs) and dropout; restore()
creates the loader's iterator before it sets the RNGs, so a relaunch mid-epoch or at an epoch's
end draws the same dropout masks and batches as a run never killed. Four ranks: DDP over gloo
with `ecsnap.settle_ddp`, whose buckets would otherwise sum the resumed steps in another order.
Then the finished job, started again, restores its last step, trains nothing and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ecsnap.testing import LocalSMP, RankRun, compare_runs, start_ranks

pytest.importorskip("torchdata")

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "train.py")


def run(
    out: Path, job: str, socket: str, ranks: int, crash_at: int | None = None, steps: int = 40
) -> RankRun:
    inject = ["-m", "ecsnap.testing.inject", "--crash-at-step", str(crash_at), "--"]
    cmd = [sys.executable, *(inject if crash_at is not None else []), EXAMPLE]
    return start_ranks([*cmd, "--out", str(out), "--steps", str(steps)], out, job, [socket], ranks)


@pytest.mark.parametrize("crash_at", [17, 12])  # mid-epoch 2; the first step of epoch 2
def test_stateful_loader_and_dropout_resume_bitwise(
    smp_node: LocalSMP, workdir: Path, crash_at: int
) -> None:
    ref = run(workdir / "ref", "ref", smp_node.socket, 1)
    assert ref.wait(120) == [0], ref.output()
    out = workdir / "run"
    crashed = run(out, "job", smp_node.socket, 1, crash_at=crash_at)
    assert crashed.wait(120) == [-9], crashed.output()
    assert f"SIGKILL at step {crash_at}, save in flight" in crashed.output()
    again = run(out, "job", smp_node.socket, 1)
    assert again.wait(120) == [0], again.output()
    assert compare_runs(workdir / "ref", out, 1) == []

    # Finished (close(finished=True)): started again, it trains nothing and says why.
    rerun = run(workdir / "rerun", "job", smp_node.socket, 1)
    assert rerun.wait(120) == [0], rerun.output()
    assert "job job finished at step 39" in rerun.output(), rerun.output()
    assert not (workdir / "rerun" / "rank0.losses.jsonl").read_text().strip()


def test_ddp_four_ranks_resume_bitwise(smp_node: LocalSMP, workdir: Path) -> None:
    ref = run(workdir / "ref", "ref", smp_node.socket, 4, steps=24)
    assert ref.wait(240) == [0] * 4, ref.output()
    out = workdir / "run"
    crashed = run(out, "ddp", smp_node.socket, 4, crash_at=14, steps=24)
    assert crashed.wait(240) == [-9] * 4, crashed.output()
    again = run(out, "ddp", smp_node.socket, 4, steps=24)
    assert again.wait(240) == [0] * 4, again.output()
    assert compare_runs(workdir / "ref", out, 4) == []
