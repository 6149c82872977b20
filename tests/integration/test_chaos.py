"""A few faults of every kind in CI (`ecsnap bench chaos --faults 100` is the full run): the job
still ends bit for bit like an uninterrupted one."""

from __future__ import annotations

import subprocess
import sys

import pytest

# These run the trainer side (`python -m ecsnap ...`) in a subprocess.
pytest.importorskip("torch", reason="the trainer library needs torch")

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def test_one_fault_of_every_kind() -> None:
    cmd = [sys.executable, "-m", "ecsnap", "bench", "chaos", "--faults", "5", "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=840)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for kind in ("trainer_kill", "smp_restart", "node_loss", "corruption", "freeze"):
        assert f"  {kind:<13} 1" in out, out
    assert "restores from nothing (fresh starts): 0" in out, out
    assert "equal the uninterrupted run's, bit for bit" in out, out
