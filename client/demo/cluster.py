"""Processes of a local demo cluster: SMP daemons and trainer ranks with torchrun's environment.

Every wait is bounded and every process is cleaned up; the tests use the same helpers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from smp.daemon import socket_is_served
from smp.logs import tail


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalSMP:
    """One node's SMP: its own socket, store directory and gRPC port."""

    root: Path
    memory_limit: str = "2G"
    extra_args: tuple[str, ...] = ()  # more `smp serve` options, e.g. ("--metrics-port", "0")
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    store_dir: str = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "smp.log"
        # Like a real node, arenas live on tmpfs when there is one; logs and socket under root.
        shm = Path("/dev/shm")
        base = Path(tempfile.mkdtemp(prefix="ecsnap-store-", dir=shm)) if shm.is_dir() else None
        self.store_dir = str(base if base is not None else self.root / "store")

    @property
    def socket(self) -> str:
        return str(self.root / "smp.sock")

    def start(self, timeout: float = 30.0) -> LocalSMP:
        cmd = [
            sys.executable,
            "-m",
            "smp",
            "serve",
            "--socket",
            self.socket,
            "--store-dir",
            self.store_dir,
            "--port",
            "0",
            "--memory-limit",
            self.memory_limit,
            *self.extra_args,
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not socket_is_served(self.socket, 200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"SMP exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"SMP did not answer within {timeout}s:\n{self.tail()}")
        return self

    def tail(self, lines: int = 30) -> str:
        return tail(self.log, lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code, self.proc = self.proc.returncode, None
        return code

    def wipe(self) -> None:
        """Lose this node's memory: what a machine failure does to its tmpfs."""
        shutil.rmtree(self.store_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop the daemon and free its memory."""
        self.stop()
        self.wipe()


@dataclass
class RankRun:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        try:
            for p in self.procs:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
        finally:
            self.kill()
        return codes

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    def output(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}"
            for log in self.logs
            if log.exists()
        )


def launch_ranks(
    out: Path,
    job: str,
    sockets: list[str],
    ranks_per_node: int,
    train_args: list[str],
    env: dict[str, str] | None = None,
    module: str = "ecsnap.demo.train",
    pass_out: bool = True,
) -> RankRun:
    """Start len(sockets) * ranks_per_node trainer processes; node n talks to sockets[n].

    `env` adds variables (e.g. ECSNAP_PARITY) to every rank's environment; `module` runs with
    `--out OUT` (unless pass_out is False) and `train_args`."""
    out.mkdir(parents=True, exist_ok=True)
    world = len(sockets) * ranks_per_node
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        node = rank // ranks_per_node
        rank_env = dict(os.environ)
        rank_env.update(env or {})
        rank_env.update(
            {
                "RANK": str(rank),
                "WORLD_SIZE": str(world),
                "LOCAL_RANK": str(rank % ranks_per_node),
                "LOCAL_WORLD_SIZE": str(ranks_per_node),
                "GROUP_RANK": str(node),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "TORCHELASTIC_RUN_ID": job,
                "ECSNAP_SOCKET": sockets[node],
                "OMP_NUM_THREADS": "1",
            }
        )
        rank_env.pop("ECSNAP_JOB", None)
        log = out / f"rank{rank}.log"
        with log.open("ab") as f:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, *(["--out", str(out)] * pass_out), *train_args],
                    env=rank_env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
        logs.append(log)
    return RankRun(procs, logs)


def read_losses(out: Path, rank: int) -> dict[int, str]:
    """step -> loss (hex); a relaunched run's later lines replace the killed run's."""
    losses: dict[int, str] = {}
    path = out / f"rank{rank}.losses.jsonl"
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            losses[int(rec["step"])] = rec["loss"]
    return losses


def read_restore(out: Path, rank: int) -> dict[str, Any]:
    return dict(json.loads((out / f"rank{rank}.restore.json").read_text()))


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare_runs(reference: Path, recovered: Path, world: int) -> list[str]:
    """Differences between two runs' final states and loss sequences (empty: bitwise equal)."""
    problems = []
    for rank in range(world):
        ref = torch.load(reference / f"rank{rank}.final.pt", weights_only=True)
        rec = torch.load(recovered / f"rank{rank}.final.pt", weights_only=True)
        for key in ref:
            if not _equal(ref[key], rec[key]):
                problems.append(f"rank {rank}: final {key} differs")
        if read_losses(reference, rank) != read_losses(recovered, rank):
            problems.append(f"rank {rank}: loss sequence differs")
    return problems


def short_tmpdir(prefix: str = "ecsnap-") -> Path:
    """Unix socket paths must stay short: keep work dirs directly under /tmp."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
