"""A committed step whose skeleton carries a code-running pickle (as a fake SMP, or a job member
writing by hand, could serve it): restore() refuses it, naming the type, and the code never runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

import ecsnap
from ecsnap.control import ControlClient
from ecsnap.flatten import FORMAT_VERSION
from smp._proto import snapshot_pb2
from smp.testing import LocalSMP

pytestmark = pytest.mark.timeout(120)

KEY = b"forged-job-key-0123456789"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_skeleton_that_would_run_code_is_refused_at_restore(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = workdir / "pwned"
    skeleton = pickle.dumps({"state": ("plain", _Payload(marker))}, protocol=4)
    smp = LocalSMP(workdir / "node", memory_limit="64M").start()
    try:
        forger = ControlClient(smp.socket, "forged", 10.0, job_key=KEY)
        forger.register(0, 1, 0, 1, 0, 1, os.getpid(), "host")
        grant = forger.begin_save(0, 1, 64)
        manifest = snapshot_pb2.Manifest(format_version=FORMAT_VERSION, skeleton=skeleton)
        forger.commit_save(0, 1, grant, 64, manifest.SerializeToString())
        assert forger.wait_committed(1, 10_000, 15.0).committed
        forger.close()
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK"):
            monkeypatch.delenv(var, raising=False)
        snap = ecsnap.Snapshotter(job_id="forged", socket=smp.socket, job_key=KEY)
        try:
            with pytest.raises(ecsnap.RestoreError, match=r"system.*add_safe_globals"):
                snap.restore({"state": torch.zeros(1)})
        finally:
            snap.close()
        assert not marker.exists()  # the payload never ran
        assert pickle.loads(skeleton) is not None and marker.exists()  # (it would have)
    finally:
        smp.close()
