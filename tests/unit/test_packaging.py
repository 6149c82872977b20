"""Generated code is fresh, and the daemon never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_proto_code_is_fresh() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def test_daemon_does_not_import_torch() -> None:
    code = (
        "import sys, smp.cli, smp.daemon, smp.codec, smp.codec.bench; "
        "smp.cli.build_parser(); "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('ecsnap')]; "
        "assert not bad, bad"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
