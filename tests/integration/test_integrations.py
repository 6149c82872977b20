"""The framework integrations as a user runs them: the README's examples (examples/*.py), a real
Trainer on CPU, SIGKILLed right after a snapshot (ecsnap.testing.inject), relaunched, and
compared bit for bit with a run never killed (final model and optimizer, every logged loss)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ecsnap.testing import LocalSMP, compare_runs, start_ranks

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _run(example: str, out: Path, job: str, socket: str, crash_at: int | None = None) -> None:
    inject = ["-m", "ecsnap.testing.inject", "--crash-at-step", str(crash_at), "--"]
    cmd = [sys.executable, *(inject if crash_at is not None else []), str(EXAMPLES / example)]
    run = start_ranks([*cmd, "--out", str(out)], out, job, [socket], 1)
    codes = run.wait(240)
    assert codes == ([-9] if crash_at is not None else [0]), run.output()
    if crash_at is not None:
        assert f"SIGKILL at step {crash_at}, save in flight" in run.output()


def _kill_and_resume(example: str, smp: LocalSMP, workdir: Path, crash_points: list[int]) -> None:
    _run(example, workdir / "ref", "ref", smp.socket)
    for at in crash_points:
        out = workdir / f"crash{at}"
        _run(example, out, f"job{at}", smp.socket, crash_at=at)
        _run(example, out, f"job{at}", smp.socket)
        assert compare_runs(workdir / "ref", out, 1) == [], f"killed at step {at}"


def test_huggingface_trainer_resumes_bitwise(smp_node: LocalSMP, workdir: Path) -> None:
    pytest.importorskip("transformers")
    # 8 steps an epoch: killed mid-epoch, and right after the snapshot that ends an epoch
    _kill_and_resume("huggingface_trainer.py", smp_node, workdir, [11, 17])


def test_lightning_trainer_resumes_bitwise(smp_node: LocalSMP, workdir: Path) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("torchdata")
    # 12 steps an epoch: killed mid-epoch, and right after the snapshot that ends an epoch
    _kill_and_resume("lightning_trainer.py", smp_node, workdir, [17, 13])
