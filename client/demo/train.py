"""A small deterministic training job used by the demo and the tests (one process per rank).

Dropout (so RNG restore matters), Adam, DDP over gloo, and a per-rank parameter that differs between
ranks (as a sharded optimizer would have). Every step is snapshotted. With --die-at-step the rank
SIGKILLs itself right after `save()` returns, while that save's copy is still in flight.

Outputs in --out: rank<R>.losses.jsonl (step, loss as float.hex), rank<R>.restore.json and
rank<R>.final.pt (parameters and optimizer state at the end).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import nn

import ecsnap
from ecsnap.testing import crash


class DataCursor:
    """Deterministic synthetic batches; the position is part of the snapshot (a data loader's)."""

    def __init__(self, seed: int, rank: int, batch: int, features: int) -> None:
        self.seed, self.rank, self.batch, self.features = seed, rank, batch, features
        self.position = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + self.position)
        self.position += 1
        x = torch.randn(self.batch, self.features, generator=g)
        y = x[:, :1].sin() + 0.1 * torch.randn(self.batch, 1, generator=g)
        return x, y

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


def build(rank: int, hidden: int, shard_size: int) -> tuple[nn.Module, nn.Parameter]:
    torch.manual_seed(1234)  # identical initial model on every rank
    model = nn.Sequential(
        nn.Linear(32, hidden),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(hidden, 1),
    )
    shard = nn.Parameter(torch.randn(shard_size, generator=torch.Generator().manual_seed(rank)))
    return model, shard


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--out", required=True)
    p.add_argument("--die-at-step", type=int, default=-1)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=1 << 20)
    p.add_argument(
        "--step-time", type=float, default=0.0, help="seconds of extra compute per step (a sleep)"
    )
    return p.parse_args(argv)


@dataclass
class _Trainer:
    """One rank's training state and the step that advances it."""

    model: nn.Module
    shard: nn.Parameter
    net: nn.Module  # what is trained: DDP(model) when there are several ranks
    optim: torch.optim.Optimizer
    data: DataCursor

    @classmethod
    def create(cls, args: argparse.Namespace, rank: int, world: int) -> _Trainer:
        model, shard = build(rank, args.hidden, args.shard_size)
        net: nn.Module = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        optim = torch.optim.Adam([*model.parameters(), shard], lr=1e-3)
        data = DataCursor(seed=7, rank=rank, batch=16, features=32)
        if world > 1:
            # DDP's buckets take their final layout now, so a resumed run sums as this one does.
            ecsnap.settle_ddp(net, torch.zeros(1, 32))
        torch.manual_seed(99 + rank)  # per-rank dropout stream
        return cls(model, shard, net, optim, data)

    def app_state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "shard": self.shard,
            "optim": self.optim,
            "data": self.data,
            "rng": ecsnap.RNGState(),
            "meta": {"note": "demo"},
        }

    def step(self) -> torch.Tensor:
        x, y = self.data.next_batch()
        loss = nn.functional.mse_loss(self.net(x), y) + 1e-3 * (self.shard.float() ** 2).mean()
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return loss


def _restore(snap: ecsnap.Snapshotter, app_state: dict[str, Any], report: Path) -> int:
    """Restore the newest snapshot, if any, and write what happened; returns the step to start."""
    t0 = time.perf_counter()
    restored = snap.restore(app_state)
    restore_s = time.perf_counter() - t0
    # Whole or not at all (written aside, then renamed): launchers read it while ranks run.
    partial = report.with_name(report.name + ".tmp")
    partial.write_text(
        json.dumps(
            {
                "step": restored,
                "seconds": restore_s,
                "pid": os.getpid(),
                "rebuilt": bool(snap.last_rebuild and snap.last_rebuild.rebuilt),
                "source": snap.last_restore.source if snap.last_restore else "none",
            }
        )
    )
    os.replace(partial, report)
    return 0 if restored is None else restored + 1


def _train(
    args: argparse.Namespace,
    trainer: _Trainer,
    snap: ecsnap.Snapshotter,
    app_state: dict[str, Any],
    start: int,
    losses: TextIO,
    rank: int,
) -> ecsnap.SaveHandle | None:
    """Steps start..--steps, each snapshotted; returns the last save's handle."""
    handle = None
    for step in range(start, args.steps):
        loss = trainer.step()
        if args.step_time:
            time.sleep(args.step_time)
        losses.write(json.dumps({"step": step, "loss": float(loss.item()).hex()}) + "\n")
        losses.flush()
        # The last step must be protected: wait for a free slot rather than skip it.
        handle = snap.save(step, app_state, on_busy="wait" if step == args.steps - 1 else None)
        if step == args.die_at_step:
            crash(rank, step, save_in_flight=not handle.done())
    return handle


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=os.environ.get("ECSNAP_LOG_LEVEL", "warning").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    torch.use_deterministic_algorithms(True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    trainer = _Trainer.create(args, rank, world)
    app_state = trainer.app_state()
    snap = ecsnap.Snapshotter()
    start = _restore(snap, app_state, out / f"rank{rank}.restore.json")
    with (out / f"rank{rank}.losses.jsonl").open("a") as losses:
        handle = _train(args, trainer, snap, app_state, start, losses, rank)
    if handle is not None:
        handle.wait_protected(timeout=60)
    torch.save(
        {
            "model": trainer.model.state_dict(),
            "optim": trainer.optim.state_dict(),
            "shard": trainer.shard.detach(),
        },
        out / f"rank{rank}.final.pt",
    )
    snap.close()
    if world > 1:
        # DDP's reducer holds the process group: let it go first, so the group is destroyed by
        # destroy_process_group (which lets gloo's threads finish) and not by the reducer at
        # interpreter exit, where it can deadlock with a gloo thread freeing a finished
        # collective's tensors (seen here, ~1 exit in 5 right after a restore's collectives).
        del trainer, app_state
        gc.collect()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
