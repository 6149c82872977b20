"""A deterministic sharded training job for the tests (one process per rank, gloo on CPU).

--mode fsdp: FSDP2 (`fully_shard` on every Linear and the root), AdamW.
--mode tp:   tensor parallel (`ColwiseParallel` / `RowwiseParallel` on the MLP), AdamW.
--mode hsdp: FSDP2 on a 2-D mesh (replicate x shard), 4 ranks.
Widths are not divisible by the world size, so shards are uneven (one rank's may be empty).
Dropout makes RNG restore matter. Every step is snapshotted; --die-at-step SIGKILLs the rank
right after that step's save() returned, its copy still in flight.

Outputs in --out: rank<R>.losses.jsonl, rank<R>.restore.json, rank<R>.final.pt: the full
(gathered) parameters and optimizer state, and the local shards, at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    RowwiseParallel,
    parallelize_module,
)

import ecsnap
from ecsnap.testing import crash

WIDTHS = (12, 37, 23, 5)  # 37 and 23 split unevenly over 2 and 4 ranks (FSDP2)
# Tensor parallel needs the sharded width divisible by the world (DTensor infers the global
# shape of an activation from even local shards); the last layer stays unsharded.
TP_WIDTHS = (12, 36, 23, 5)
TABLE = 1 << 16  # rows of an embedding table: 3 MiB of weights keep each save's copy in flight


class Cursor:
    """Deterministic synthetic batches; the position is part of the snapshot."""

    def __init__(self, rank: int) -> None:
        self.rank, self.position = rank, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1_000_003 * self.rank + self.position)
        self.position += 1
        x = torch.randn(8, WIDTHS[0], generator=g)
        return torch.randint(0, TABLE, (8,), generator=g), x, x[:, : WIDTHS[-1]].sin()

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])


class Net(nn.Module):
    def __init__(self, w: tuple[int, ...]) -> None:
        super().__init__()
        self.table = nn.Embedding(TABLE, w[0])
        self.mlp = nn.Sequential(
            nn.Linear(w[0], w[1]),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(w[1], w[2]),
            nn.ReLU(),
            nn.Linear(w[2], w[3]),
        )

    def forward(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.mlp(x + self.table(idx))
        return out


def build_model(mode: str) -> Net:
    torch.manual_seed(1234)  # identical initial model on every rank
    return Net(TP_WIDTHS if mode == "tp" else WIDTHS)


def shard(model: Net, mode: str, world: int) -> Net:
    if mode in ("fsdp", "hsdp"):
        mesh = None
        if mode == "hsdp":
            mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("replicate", "shard"))
        for layer in [model.table, *model.mlp]:
            if isinstance(layer, (nn.Linear, nn.Embedding)):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    elif mode == "tp":  # the table stays replicated: every rank sees the same batch
        mesh = init_device_mesh("cpu", (world,))
        parallelize_module(model, mesh, {"mlp.0": ColwiseParallel(), "mlp.3": RowwiseParallel()})
    else:
        raise SystemExit(f"unknown mode {mode}")
    return model


def full(value: Any) -> Any:
    """Gathered copies (collective) of every DTensor; plain tensors cloned."""
    if isinstance(value, DTensor):
        return value.full_tensor().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: full(v) for k, v in value.items()}
    return value


def local(value: Any) -> Any:
    if isinstance(value, DTensor):
        return value.to_local().detach().clone()
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: local(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mode", default="fsdp")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--out", required=True)
    p.add_argument("--die-at-step", type=int, default=-1)
    p.add_argument("--export-at", type=int, default=-1, help="export_dcp after this step")
    args = p.parse_args(argv)

    torch.use_deterministic_algorithms(True)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = shard(build_model(args.mode), args.mode, world)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = Cursor(rank if args.mode != "tp" else 0)  # TP: every rank sees the same batch
    torch.manual_seed(99 + rank)
    app_state: dict[str, Any] = {
        "model": model,
        "optim": optim,
        "data": data,
        "rng": ecsnap.RNGState(),
    }
    snap = ecsnap.Snapshotter()
    t0 = time.perf_counter()
    restored = snap.restore(app_state)
    info = {"step": restored, "seconds": time.perf_counter() - t0, "pid": os.getpid()}
    info["rebuilt"] = bool(snap.last_rebuild and snap.last_rebuild.rebuilt)
    if restored is not None:
        info["restored"] = {"model": full(model.state_dict()), "optim": full(optim.state_dict())}
        torch.save(info.pop("restored"), out / f"rank{rank}.restored{restored}.pt")
    (out / f"rank{rank}.restore.json").write_text(json.dumps(info))
    start = 0 if restored is None else restored + 1
    handle = None
    with (out / f"rank{rank}.losses.jsonl").open("a") as losses:
        for step in range(start, args.steps):
            idx, x, y = data.next_batch()
            loss = nn.functional.mse_loss(model(idx, x), y)
            optim.zero_grad()
            loss.backward()
            optim.step()
            losses.write(json.dumps({"step": step, "loss": float(loss.item()).hex()}) + "\n")
            losses.flush()
            last = step == args.steps - 1
            handle = snap.save(step, app_state, on_busy="wait" if last else None)
            if step == args.export_at:
                handle.wait_protected(timeout=60)
                snap.export_dcp(out / "dcp", wait=True)
                torch.save(
                    {"model": full(model.state_dict()), "optim": full(optim.state_dict())},
                    out / f"rank{rank}.exported.pt",
                )
            if step == args.die_at_step:
                crash(rank, step, save_in_flight=not handle.done())
            # Every step's full state, for a bitwise comparison at any step.
            if os.environ.get("SHARDED_KEEP_STEPS"):
                torch.save(
                    {"model": full(model.state_dict()), "optim": full(optim.state_dict())},
                    out / f"rank{rank}.step{step}.pt",
                )
    if handle is not None:
        handle.wait_protected(timeout=60)
    final = {
        "model": full(model.state_dict()),
        "optim": full(optim.state_dict()),
        "local": {"model": local(model.state_dict()), "optim": local(optim.state_dict())},
    }
    torch.save(final, out / f"rank{rank}.final.pt")
    snap.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
