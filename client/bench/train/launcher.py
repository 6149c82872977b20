"""Starting the benchmark's ranks (torchrun's environment, one SMP socket per node) and what the
machine is (cores, memory, the checkpoint directory's filesystem)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ecsnap.bench.train.base import Spec
from ecsnap.bench.train.workload import ModelConfig
from ecsnap.testing import RankRun, start_ranks


def _fs_type(path: Path) -> str:
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def machine_info(ckpt_root: Path, device: str) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "ckpt_dir_fs": _fs_type(ckpt_root),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Launcher:
    """Starts nodes x ranks_per_node worker processes with torchrun's environment."""

    def __init__(self, args: argparse.Namespace, cfg: ModelConfig, device: str) -> None:
        self.args, self.cfg, self.device = args, cfg, device
        self.world = args.nodes * args.ranks_per_node
        self.threads = args.threads or max(1, (os.cpu_count() or 1) // self.world)

    def launch(
        self,
        spec: Spec,
        phase: str,
        out: Path,
        ckpt_dir: Path,
        job: str,
        sockets: list[str],
        env_extra: dict[str, str],
        rpn: int,
    ) -> tuple[float, RankRun]:
        """len(sockets) nodes x rpn ranks; node n's ranks talk to sockets[n] (if not empty)."""
        a = self.args
        assert len(sockets) * rpn == self.world, (sockets, rpn)
        cmd = [
            sys.executable,
            "-m",
            "ecsnap.bench.train.worker",
            f"--phase={phase}",
            f"--contender={spec.name}",
            f"--interval={a.interval}",
            f"--out={out}",
            f"--ckpt-dir={ckpt_dir}",
            f"--warmup={a.warmup}",
            f"--steps={a.steps}",
            f"--device={self.device}",
            f"--threads={self.threads}",
            f"--timeout={a.timeout}",
            f"--model={json.dumps(asdict(self.cfg))}",
        ]
        t_launch = time.time()
        run = start_ranks(cmd, out, job, sockets, rpn, env_extra, self.threads)
        return t_launch, run
