"""`ecsnap bench train` plumbing on tiny sizes (not its speed): real SMPs, real ranks, real files.

One invocation runs baseline, torch.save and ecsnap (2 ranks, 1 node) with ecsnap's worker made to
fail on purpose in a second invocation: the JSON holds every raw measurement, the table shows each
contender that ran, a failed contender is shown as failed with its error and no figures, every
temporary directory is removed, and the PNG is written when matplotlib is installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

# These run the trainer side (`python -m ecsnap ...`) in a subprocess.
pytest.importorskip("torch", reason="the trainer library needs torch")

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

TINY = [
    "--nodes=1",
    "--ranks-per-node=2",
    "--steps=3",
    "--warmup=1",
    "--interval=2",
    "--repeats=1",
    "--d-model=32",
    "--layers=1",
    "--heads=2",
    "--vocab=256",
    "--seq=16",
    "--batch=2",
    "--timeout=120",
]


def _bench(workdir: Path, *extra: str) -> tuple[int, str, dict[str, object]]:
    out = workdir / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ecsnap",
            "bench",
            "train",
            *TINY,
            f"--json={out}",
            f"--plot={workdir / 'bench.png'}",
            f"--ckpt-dir={workdir}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=360,
    )
    text = proc.stdout + proc.stderr
    return proc.returncode, text, json.loads(out.read_text()) if out.exists() else {}


def test_contenders_run_and_report(workdir: Path) -> None:
    code, text, data = _bench(workdir, "--contenders=baseline,torch_save,ecsnap")
    assert code == 0, text
    contenders = data["contenders"]
    assert isinstance(contenders, dict)
    assert list(contenders) == ["baseline", "torch_save", "ecsnap"]
    for name, entry in contenders.items():
        assert entry["status"] == "ok", (name, entry.get("errors"))
        (run,) = entry["raw_runs"]
        ranks = run["train"]["ranks"]
        assert [r["rank"] for r in ranks] == [0, 1]
        assert all(len(r["step_s"]) == 3 and r["max_rss_bytes"] > 0 for r in ranks)
        s = entry["summary"]
        assert s["steps_per_s"]["median"] > 0
        assert s["kill"]["recovery_s"]["median"] > 0
    base = contenders["baseline"]["summary"]
    assert base["throughput_vs_baseline"]["median"] == 1.0
    assert base["checkpoints"] == 0
    ts = contenders["torch_save"]
    assert ts["summary"]["checkpoints"] == 2  # 3 steps, every 2nd: one per rank
    assert ts["raw_runs"][0]["kill"]["restored_step"] == 2  # warm-up step 0, measured 1..3
    assert "cold" in ts["raw_runs"][0] and ts["raw_runs"][0]["evicted_bytes"] > 0
    eco = contenders["ecsnap"]
    assert eco["summary"]["checkpoints"] == 6  # every step, 2 ranks
    assert all(
        c["safe_s"] is not None for c in eco["raw_runs"][0]["train"]["ranks"][0]["checkpoints"]
    )
    assert eco["raw_runs"][0]["kill"]["restored_step"] == 3
    assert eco["raw_runs"][0]["smp_memory"][0]["arena_bytes"] > 0
    assert eco["summary"]["smp_vm_hwm_bytes"]["median"] > 0
    # The table names every contender that ran, and the temporary directories are gone.
    for label in ("no fault tolerance", "torch.save /2", "ecsnap /1"):
        assert label in text
    assert not list(workdir.glob("ecsnap-bt-ckpt-*")), list(workdir.iterdir())
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in text
    else:
        png = workdir / "bench.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_failed_contender_is_reported_as_failed(workdir: Path) -> None:
    code, text, data = _bench(
        workdir, "--contenders=baseline,ecsnap", "--inject-failure=ecsnap", "--plot="
    )
    assert code == 1, text
    contenders = data["contenders"]
    assert isinstance(contenders, dict)
    assert contenders["baseline"]["status"] == "ok"
    failed = contenders["ecsnap"]
    assert failed["status"] == "failed"
    assert "summary" not in failed and failed["raw_runs"] == []
    assert "injected failure" in failed["errors"][0]["error"]
    assert "ecsnap /1" in text and "FAILED" in text and "injected failure" in text
    # No target is judged on a contender that did not run.
    assert data["targets"] == []


def test_unknown_contender_is_refused(workdir: Path) -> None:
    code, text, data = _bench(workdir, "--contenders=baseline,nonsense")
    assert code == 2 and "nonsense" in text and data == {}
