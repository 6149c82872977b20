"""Trainer ranks of a local cluster: processes with torchrun's environment, their results.

`launch_ranks` starts nodes x ranks-per-node processes of a training script, each talking to its
node's SMP; `compare_runs` checks two runs' final states and losses bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from smp.testing import free_port


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


def crash(rank: int, step: int, save_in_flight: bool) -> NoReturn:
    """The trainer crash a test injects: one line saying whether a save was in flight (tests
    count it), then SIGKILL (no close(), no cleanup, no atexit)."""
    line = f"rank {rank}: SIGKILL at step {step}, save in flight: {save_in_flight}"
    print(line, file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    raise SystemExit(137)  # not reached: SIGKILL cannot be caught


def torchrun_env(
    rank: int,
    world: int,
    ranks_per_node: int,
    master_port: int,
    job: str,
    socket: str | None,
    threads: int = 1,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment torchrun gives rank `rank` of a job on ranks_per_node-rank nodes, plus
    the node's SMP socket (None: whatever `base` says)."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank % ranks_per_node),
            "LOCAL_WORLD_SIZE": str(ranks_per_node),
            "GROUP_RANK": str(rank // ranks_per_node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(master_port),
            "TORCHELASTIC_RUN_ID": job,
            "OMP_NUM_THREADS": str(threads),
        }
    )
    env.pop("ECSNAP_JOB", None)  # the job id is torchrun's run id, as under torchrun
    if socket:
        env["ECSNAP_SOCKET"] = socket
    return env


def start_ranks(
    cmd: list[str],
    out: Path,
    job: str,
    sockets: list[str],
    ranks_per_node: int,
    env: Mapping[str, str] | None = None,
    threads: int = 1,
) -> RankRun:
    """Run `cmd` as len(sockets) x ranks_per_node ranks; node n's ranks talk to sockets[n].
    Output goes to out/rank<R>.log."""
    out.mkdir(parents=True, exist_ok=True)
    world = len(sockets) * ranks_per_node
    port = free_port()
    procs, logs = [], []
    for rank in range(world):
        base = {**os.environ, **(env or {})}
        rank_env = torchrun_env(
            rank, world, ranks_per_node, port, job, sockets[rank // ranks_per_node], threads, base
        )
        log = out / f"rank{rank}.log"
        with log.open("ab") as f:
            procs.append(subprocess.Popen(cmd, env=rank_env, stdout=f, stderr=subprocess.STDOUT))
        logs.append(log)
    return RankRun(procs, logs)


def launch_ranks(
    out: Path,
    job: str,
    sockets: list[str],
    ranks_per_node: int,
    train_args: list[str],
    env: Mapping[str, str] | None = None,
    module: str = "ecsnap.demo.train",
    pass_out: bool = True,
) -> RankRun:
    """Start len(sockets) * ranks_per_node processes of `python -m module [--out OUT]
    train_args`; node n talks to sockets[n]. `env` adds variables (e.g. ECSNAP_PARITY)."""
    cmd = [sys.executable, "-m", module, *(["--out", str(out)] * pass_out), *train_args]
    return start_ranks(cmd, out, job, sockets, ranks_per_node, env)


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


def states_equal(a: Any, b: Any) -> bool:
    """Bit for bit: tensors by dtype and value, containers member by member."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(states_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare_runs(reference: Path, recovered: Path, world: int) -> list[str]:
    """Differences between two runs' final states and loss sequences (empty: bitwise equal)."""
    problems = []
    for rank in range(world):
        ref = torch.load(reference / f"rank{rank}.final.pt", weights_only=True)
        rec = torch.load(recovered / f"rank{rank}.final.pt", weights_only=True)
        for key in ref:
            if not states_equal(ref[key], rec[key]):
                problems.append(f"rank {rank}: final {key} differs")
        if read_losses(reference, rank) != read_losses(recovered, rank):
            problems.append(f"rank {rank}: loss sequence differs")
    return problems
